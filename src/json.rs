//! JSON views of deliveries, shared by the HTTP API and the CLI so both show the same fields
//! under the same names (the column names of DESIGN.md, "Interfaces").
//!
//! A lease token is never shown: it is the fence of an in-flight attempt, and a caller who had
//! it could only misuse it.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::delivery::{Attempt, Delivery, DeliveryDetail};

/// RFC 3339 text of `t`. Formatting only fails for years outside 0..=9999, which no stored time
/// reaches; such a time shows as null rather than a panic.
fn time_json(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map_or(Value::Null, Value::String)
}

fn optional_time_json(t: Option<OffsetDateTime>) -> Value {
    t.map_or(Value::Null, time_json)
}

/// The stored payload as JSON. It was valid JSON text when stored (the API and the CLI check);
/// a row written by hand that is not JSON is shown as a string rather than hidden.
fn payload_json(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|_| Value::String(payload.to_owned()))
}

/// One delivery, with the column names of DESIGN.md. `custom_headers` is a list (empty when
/// there are none), `status` one of `pending`, `succeeded`, `dead_letter`, times RFC 3339.
pub fn delivery_json(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "delivery_uuid": d.delivery_uuid,
        "organization_id": d.organization_id,
        "workflow_run_id": d.workflow_run_id,
        "webhook_node_id": d.webhook_node_id,
        "webhook_name": d.webhook_name,
        "endpoint_url": d.endpoint_url,
        "http_method": d.http_method,
        "payload": payload_json(&d.payload),
        "custom_headers": d.custom_headers,
        "credential_uuid": d.credential_uuid,
        "status": d.status.as_str(),
        "attempt_count": d.attempt_count,
        "max_attempts": d.max_attempts,
        "scheduled_for": optional_time_json(d.scheduled_for),
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": time_json(d.created_at),
        "updated_at": time_json(d.updated_at),
    })
}

/// One attempt of the history.
pub fn attempt_json(a: &Attempt) -> Value {
    json!({
        "attempt_number": a.attempt_number,
        "started_at": time_json(a.started_at),
        "duration_ms": a.duration_ms,
        "status_code": a.status_code,
        "error": a.error,
        "response_excerpt": a.response_excerpt,
    })
}

/// A delivery with `"attempts": [...]`, oldest first.
pub fn detail_json(detail: &DeliveryDetail) -> Value {
    let mut value = delivery_json(&detail.delivery);
    if let Value::Object(map) = &mut value {
        map.insert(
            "attempts".to_owned(),
            Value::Array(detail.attempts.iter().map(attempt_json).collect()),
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Header, Status};
    use time::macros::datetime;

    fn delivery() -> Delivery {
        Delivery {
            id: 3,
            delivery_uuid: "u-1".into(),
            organization_id: 7,
            workflow_run_id: 42,
            webhook_node_id: "node-1".into(),
            webhook_name: None,
            endpoint_url: "https://example.com/hook".into(),
            http_method: "POST".into(),
            payload: r#"{"a":1.50,"b":"ü"}"#.into(),
            custom_headers: Vec::new(),
            credential_uuid: Some("cred-1".into()),
            status: Status::DeadLetter,
            attempt_count: 2,
            max_attempts: 5,
            scheduled_for: None,
            last_status_code: Some(401),
            last_error: Some("HTTP 401".into()),
            created_at: datetime!(2024-05-01 12:00:00.5 UTC),
            updated_at: datetime!(2024-05-01 12:00:01 UTC),
        }
    }

    #[test]
    fn delivery_uses_column_names_and_rfc3339() {
        let v = delivery_json(&delivery());
        assert_eq!(v["delivery_uuid"], "u-1");
        assert_eq!(v["status"], "dead_letter");
        assert_eq!(v["custom_headers"], json!([]));
        assert_eq!(v["payload"]["b"], "ü");
        assert_eq!(v["created_at"], "2024-05-01T12:00:00.5Z");
        assert_eq!(v["scheduled_for"], Value::Null);
        assert_eq!(v["last_status_code"], 401);
        assert!(v.get("lease_token").is_none());
    }

    #[test]
    fn headers_are_a_list_of_key_value() {
        let mut d = delivery();
        d.custom_headers = vec![Header {
            key: "X-Source".into(),
            value: "dograh".into(),
        }];
        assert_eq!(
            delivery_json(&d)["custom_headers"],
            json!([{"key": "X-Source", "value": "dograh"}])
        );
    }

    #[test]
    fn non_json_payload_is_shown_as_text() {
        let mut d = delivery();
        d.payload = "not json".into();
        assert_eq!(delivery_json(&d)["payload"], "not json");
    }

    #[test]
    fn detail_lists_attempts() {
        let detail = DeliveryDetail {
            delivery: delivery(),
            attempts: vec![Attempt {
                attempt_number: 1,
                started_at: datetime!(2024-05-01 12:00:00 UTC),
                duration_ms: 12,
                status_code: Some(401),
                error: Some("HTTP 401".into()),
                response_excerpt: Some("no".into()),
            }],
        };
        let v = detail_json(&detail);
        assert_eq!(v["attempts"][0]["attempt_number"], 1);
        assert_eq!(v["attempts"][0]["duration_ms"], 12);
        assert_eq!(v["attempts"][0]["started_at"], "2024-05-01T12:00:00Z");
        assert_eq!(v["delivery_uuid"], "u-1");
    }
}
