//! JSON views of deliveries, shared by the HTTP API and the CLI so both show the same fields
//! under the same names (the column names of DESIGN.md, "Interfaces").
//!
//! A lease token is never shown: it is the fence of an in-flight attempt, and a caller who had
//! it could only misuse it.

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::delivery::{Attempt, Delivery, DeliveryDetail, Header, Page};

/// RFC 3339 text of `t`. Formatting only fails for years outside 0..=9999, which no stored time
/// reaches; such a time shows as null rather than a panic.
fn time_text(t: OffsetDateTime) -> Option<String> {
    t.format(&Rfc3339).ok()
}

/// The stored payload, embedded as it is stored (byte for byte: no re-parsing, no key
/// reordering). It was valid JSON when stored; a row written by hand that is not JSON is shown
/// as a string rather than hidden.
pub struct PayloadView<'a>(&'a str);

impl Serialize for PayloadView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(self.0) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(self.0),
        }
    }
}

/// One delivery, with the column names of DESIGN.md. `custom_headers` is a list (empty when
/// there are none), `status` one of `pending`, `succeeded`, `dead_letter`, times RFC 3339.
/// `attempts` is present only in the detailed view.
#[derive(Serialize)]
pub struct DeliveryView<'a> {
    pub id: i64,
    pub delivery_uuid: &'a str,
    pub organization_id: i64,
    pub workflow_run_id: i64,
    pub webhook_node_id: &'a str,
    pub webhook_name: Option<&'a str>,
    pub endpoint_url: &'a str,
    pub http_method: &'a str,
    pub payload: PayloadView<'a>,
    pub custom_headers: &'a [Header],
    pub credential_uuid: Option<&'a str>,
    pub status: &'static str,
    pub attempt_count: u32,
    pub max_attempts: u32,
    pub scheduled_for: Option<String>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<&'a str>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView<'a>>>,
}

/// One attempt of the history.
#[derive(Serialize)]
pub struct AttemptView<'a> {
    pub attempt_number: u32,
    pub started_at: Option<String>,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<&'a str>,
    pub response_excerpt: Option<&'a str>,
}

/// The answer to an enqueue (API and CLI).
#[derive(Serialize)]
pub struct EnqueuedView<'a> {
    pub created: bool,
    pub delivery: DeliveryView<'a>,
    pub dropped_headers: &'a [String],
}

/// One page of a listing (API and CLI).
#[derive(Serialize)]
pub struct PageView<'a> {
    pub deliveries: Vec<DeliveryView<'a>>,
    pub next_after: Option<i64>,
}

/// The view of one delivery.
pub fn delivery_view(d: &Delivery) -> DeliveryView<'_> {
    DeliveryView {
        id: d.id,
        delivery_uuid: &d.delivery_uuid,
        organization_id: d.organization_id,
        workflow_run_id: d.workflow_run_id,
        webhook_node_id: &d.webhook_node_id,
        webhook_name: d.webhook_name.as_deref(),
        endpoint_url: &d.endpoint_url,
        http_method: &d.http_method,
        payload: PayloadView(&d.payload),
        custom_headers: &d.custom_headers,
        credential_uuid: d.credential_uuid.as_deref(),
        status: d.status.as_str(),
        attempt_count: d.attempt_count,
        max_attempts: d.max_attempts,
        scheduled_for: d.scheduled_for.and_then(time_text),
        last_status_code: d.last_status_code,
        last_error: d.last_error.as_deref(),
        created_at: time_text(d.created_at),
        updated_at: time_text(d.updated_at),
        attempts: None,
    }
}

/// The view of one attempt.
pub fn attempt_view(a: &Attempt) -> AttemptView<'_> {
    AttemptView {
        attempt_number: a.attempt_number,
        started_at: time_text(a.started_at),
        duration_ms: a.duration_ms,
        status_code: a.status_code,
        error: a.error.as_deref(),
        response_excerpt: a.response_excerpt.as_deref(),
    }
}

/// A delivery with `"attempts": [...]`, oldest first.
pub fn detail_view(detail: &DeliveryDetail) -> DeliveryView<'_> {
    DeliveryView {
        attempts: Some(detail.attempts.iter().map(attempt_view).collect()),
        ..delivery_view(&detail.delivery)
    }
}

/// A page of deliveries with its cursor.
pub fn page_view(page: &Page) -> PageView<'_> {
    PageView {
        deliveries: page.deliveries.iter().map(delivery_view).collect(),
        next_after: page.next_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Status;
    use serde_json::{Value, json};

    fn delivery_json(d: &Delivery) -> Value {
        serde_json::to_value(delivery_view(d)).unwrap()
    }

    fn detail_json(d: &DeliveryDetail) -> Value {
        serde_json::to_value(detail_view(d)).unwrap()
    }
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
        assert!(v.get("attempts").is_none());
    }

    #[test]
    fn payload_is_embedded_byte_for_byte() {
        let text = serde_json::to_string(&delivery_view(&delivery())).unwrap();
        assert!(text.contains(r#""payload":{"a":1.50,"b":"ü"}"#), "{text}");
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
