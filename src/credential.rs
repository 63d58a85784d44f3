//! Credentials, as the origin's `ExternalCredentialModel` rows: a type and a JSON map of fields,
//! turned into one request header at send time (`build_auth_header`). Pure: storage and lookup by
//! uuid live in the store.

use std::fmt;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::headers::{is_valid_header_name, is_valid_header_value};

/// The kind of credential, named as the origin's `webhook_credential_type` enum.
///
/// The origin's `none` is not here: a credential that adds no header is a configuration
/// mistake, so [`CredentialType::parse`] refuses it instead of silently sending without auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialType {
    /// `Authorization: Bearer <token>`.
    BearerToken,
    /// `<header_name, default X-API-Key>: <api_key>`.
    ApiKey,
    /// `Authorization: Basic base64(<username>:<password>)`.
    BasicAuth,
    /// `<header_name, default X-Custom>: <header_value>`.
    CustomHeader,
}

impl CredentialType {
    /// The origin's snake_case name, as stored and as accepted by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BearerToken => "bearer_token",
            Self::ApiKey => "api_key",
            Self::BasicAuth => "basic_auth",
            Self::CustomHeader => "custom_header",
        }
    }

    /// Parses the origin's snake_case name.
    ///
    /// # Errors
    ///
    /// A message for the API caller when `s` is `none` (a credential must add a header) or not a
    /// known type.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "bearer_token" => Ok(Self::BearerToken),
            "api_key" => Ok(Self::ApiKey),
            "basic_auth" => Ok(Self::BasicAuth),
            "custom_header" => Ok(Self::CustomHeader),
            "none" => {
                Err("credential_type 'none' adds no header; omit the credential instead".to_owned())
            }
            other => Err(format!(
                "unknown credential_type '{other}': expected one of bearer_token, api_key, basic_auth, custom_header"
            )),
        }
    }

    /// (required fields, optional fields) of this type's `credential_data`.
    fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Self::BearerToken => (&["token"], &[]),
            Self::ApiKey => (&["api_key"], &["header_name"]),
            Self::BasicAuth => (&["username", "password"], &[]),
            Self::CustomHeader => (&["header_value"], &["header_name"]),
        }
    }
}

impl fmt::Display for CredentialType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated credential. `Debug` shows the type and field names, never the values, so a
/// credential can be logged or put in an error without leaking it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Which header [`Credential::auth_header`] builds.
    pub credential_type: CredentialType,
    /// The origin's `credential_data`, exactly as given (defaults are applied when building the
    /// header, as the origin does, so stored rows stay in the origin's shape).
    pub data: Map<String, Value>,
}

/// Headers a credential may not set: framing and routing headers would break the request, and
/// the `X-Dograh-*` headers are overwritten anyway, so asking for one is a mistake.
fn reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection" | "te" | "upgrade"
    ) || lower.starts_with("x-dograh-")
}

/// Headers sent by [`Credential::auth_header`] carry these fields verbatim, so they must be valid
/// header values; `basic_auth` fields are base64-encoded and need no such check.
const RAW_VALUE_FIELDS: &[&str] = &["token", "api_key", "header_value"];

impl Credential {
    /// Validates `credential_data` for `credential_type` (both as the API receives them).
    ///
    /// Required fields: `bearer_token`: `token`; `api_key`: `api_key` (optional `header_name`,
    /// default `X-API-Key`); `basic_auth`: `username`, `password`; `custom_header`:
    /// `header_value` (optional `header_name`, default `X-Custom`). Fields must be strings; a
    /// null optional field counts as absent.
    ///
    /// # Errors
    ///
    /// A message naming the offending field when: the type is unknown or `none`; `data` is not
    /// an object; a required field is missing, not a string or empty (for `basic_auth`, the
    /// password may be empty but not both fields, and the username may not contain `:`); an
    /// unknown field is present (likely a typo that would otherwise silently fall back to a
    /// default); `header_name` is not an HTTP token or names a reserved header; a value sent
    /// verbatim contains CR, LF or another control character.
    pub fn parse(credential_type: &str, data: &Value) -> Result<Credential, String> {
        let kind = CredentialType::parse(credential_type)?;
        let Value::Object(map) = data else {
            return Err(format!("credential_data for {kind} must be a JSON object"));
        };
        let (required, optional) = kind.fields();
        for key in map.keys() {
            if !required.contains(&key.as_str()) && !optional.contains(&key.as_str()) {
                let mut expected = required.to_vec();
                expected.extend_from_slice(optional);
                return Err(format!(
                    "unknown field '{key}' in credential_data for {kind} (expected: {})",
                    expected.join(", ")
                ));
            }
        }
        for &field in required {
            let value = match map.get(field) {
                None | Some(Value::Null) => {
                    return Err(format!(
                        "credential_data for {kind} is missing required field '{field}'"
                    ));
                }
                Some(Value::String(s)) => s,
                Some(_) => {
                    return Err(format!(
                        "field '{field}' in credential_data must be a string"
                    ));
                }
            };
            // An empty basic-auth password is legitimate (API key as username); an empty token
            // or value would send a header that can only fail.
            if value.is_empty() && field != "password" && field != "username" {
                return Err(format!(
                    "field '{field}' in credential_data must not be empty"
                ));
            }
            if RAW_VALUE_FIELDS.contains(&field) && !is_valid_header_value(value) {
                return Err(format!(
                    "field '{field}' in credential_data must not contain CR, LF or control characters"
                ));
            }
        }
        if kind == CredentialType::BasicAuth {
            let user = map
                .get("username")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let pass = map
                .get("password")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if user.is_empty() && pass.is_empty() {
                return Err("basic_auth needs a non-empty 'username' or 'password'".to_owned());
            }
            // RFC 7617: the user-id cannot contain a colon; the receiver would split it wrongly.
            if user.contains(':') {
                return Err("field 'username' in credential_data must not contain ':'".to_owned());
            }
        }
        match map.get("header_name") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) => {
                if !is_valid_header_name(name) {
                    return Err(format!(
                        "field 'header_name' in credential_data is not a valid HTTP header name: {name:?}"
                    ));
                }
                if reserved_header(name) {
                    return Err(format!(
                        "field 'header_name' in credential_data names a reserved header: {name}"
                    ));
                }
            }
            Some(_) => {
                return Err("field 'header_name' in credential_data must be a string".to_owned());
            }
        }
        Ok(Credential {
            credential_type: kind,
            data: map.clone(),
        })
    }

    /// The header this credential adds, exactly as the origin's `build_auth_header`. Missing
    /// fields count as `""` (as the origin's `.get(..., "")`), so a hand-built `Credential`
    /// cannot make this panic.
    pub fn auth_header(&self) -> (String, String) {
        let field = |name: &str| self.data.get(name).and_then(Value::as_str).unwrap_or("");
        let header_name = |default: &str| {
            self.data
                .get("header_name")
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        match self.credential_type {
            CredentialType::BearerToken => (
                "Authorization".to_owned(),
                format!("Bearer {}", field("token")),
            ),
            CredentialType::ApiKey => (header_name("X-API-Key"), field("api_key").to_owned()),
            CredentialType::BasicAuth => {
                let pair = format!("{}:{}", field("username"), field("password"));
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                ("Authorization".to_owned(), format!("Basic {encoded}"))
            }
            CredentialType::CustomHeader => {
                (header_name("X-Custom"), field("header_value").to_owned())
            }
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Field names only: values are secrets (and header_name is not worth a special case).
        f.debug_struct("Credential")
            .field("credential_type", &self.credential_type)
            .field("fields", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_names_round_trip() {
        for kind in [
            CredentialType::BearerToken,
            CredentialType::ApiKey,
            CredentialType::BasicAuth,
            CredentialType::CustomHeader,
        ] {
            assert_eq!(CredentialType::parse(kind.as_str()), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        for bad in ["none", "", "Bearer_Token", "oauth"] {
            assert!(CredentialType::parse(bad).is_err(), "{bad:?}");
        }
        assert!(CredentialType::parse("none").unwrap_err().contains("omit"));
    }

    #[test]
    fn auth_header_table() {
        let cases: &[(&str, Value, (&str, &str))] = &[
            (
                "bearer_token",
                json!({"token": "t0k"}),
                ("Authorization", "Bearer t0k"),
            ),
            ("api_key", json!({"api_key": "k1"}), ("X-API-Key", "k1")),
            (
                "api_key",
                json!({"api_key": "k1", "header_name": "X-Goog-Api-Key"}),
                ("X-Goog-Api-Key", "k1"),
            ),
            (
                "api_key",
                json!({"api_key": "k1", "header_name": null}),
                ("X-API-Key", "k1"),
            ),
            (
                "basic_auth",
                json!({"username": "Aladdin", "password": "open sesame"}),
                ("Authorization", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            ),
            (
                "basic_auth",
                json!({"username": "sk_live", "password": ""}),
                ("Authorization", "Basic c2tfbGl2ZTo="),
            ),
            (
                "custom_header",
                json!({"header_value": "v"}),
                ("X-Custom", "v"),
            ),
            (
                "custom_header",
                json!({"header_value": "v", "header_name": "X-Shared-Secret"}),
                ("X-Shared-Secret", "v"),
            ),
        ];
        for (kind, data, (name, value)) in cases {
            let cred = Credential::parse(kind, data).expect("valid credential");
            assert_eq!(
                cred.auth_header(),
                ((*name).to_owned(), (*value).to_owned()),
                "{kind} {data}"
            );
        }
    }

    #[test]
    fn parse_rejects_table() {
        // (type, data, a fragment the message must contain)
        let cases: &[(&str, Value, &str)] = &[
            ("none", json!({}), "none"),
            ("magic", json!({}), "unknown credential_type"),
            ("bearer_token", json!("tok"), "JSON object"),
            ("bearer_token", json!({}), "'token'"),
            ("bearer_token", json!({"token": null}), "'token'"),
            ("bearer_token", json!({"token": ""}), "'token'"),
            (
                "bearer_token",
                json!({"token": 5}),
                "'token' in credential_data must be a string",
            ),
            ("bearer_token", json!({"token": "a\r\nX-Evil: 1"}), "CR, LF"),
            (
                "bearer_token",
                json!({"token": "t", "tokn": "x"}),
                "unknown field 'tokn'",
            ),
            ("api_key", json!({"header_name": "X-K"}), "'api_key'"),
            (
                "api_key",
                json!({"api_key": "k", "header_name": "X Key"}),
                "header_name",
            ),
            (
                "api_key",
                json!({"api_key": "k", "header_name": ""}),
                "header_name",
            ),
            (
                "api_key",
                json!({"api_key": "k", "header_name": "Bad\r\n"}),
                "header_name",
            ),
            (
                "api_key",
                json!({"api_key": "k", "header_name": 1}),
                "header_name",
            ),
            (
                "api_key",
                json!({"api_key": "k", "header_name": "Host"}),
                "reserved",
            ),
            (
                "api_key",
                json!({"api_key": "k", "header_name": "X-Dograh-Delivery-Id"}),
                "reserved",
            ),
            ("api_key", json!({"api_key": "k\n"}), "'api_key'"),
            ("basic_auth", json!({"username": "u"}), "'password'"),
            ("basic_auth", json!({"password": "p"}), "'username'"),
            (
                "basic_auth",
                json!({"username": "", "password": ""}),
                "non-empty",
            ),
            (
                "basic_auth",
                json!({"username": "a:b", "password": "p"}),
                "':'",
            ),
            (
                "custom_header",
                json!({"header_name": "X-A"}),
                "'header_value'",
            ),
            (
                "custom_header",
                json!({"header_value": "v\r"}),
                "'header_value'",
            ),
        ];
        for (kind, data, fragment) in cases {
            let err = Credential::parse(kind, data).expect_err("must be refused");
            assert!(
                err.contains(fragment),
                "{kind} {data}: {err:?} lacks {fragment:?}"
            );
        }
    }

    #[test]
    fn auth_header_tolerates_hand_built_data() {
        let cred = Credential {
            credential_type: CredentialType::BasicAuth,
            data: Map::new(),
        };
        assert_eq!(
            cred.auth_header(),
            ("Authorization".to_owned(), "Basic Og==".to_owned())
        );
    }

    #[test]
    fn debug_never_prints_secrets() {
        let cases = [
            ("bearer_token", json!({"token": "SECRET-1"})),
            (
                "api_key",
                json!({"api_key": "SECRET-2", "header_name": "X-K"}),
            ),
            (
                "basic_auth",
                json!({"username": "SECRET-3", "password": "SECRET-4"}),
            ),
            ("custom_header", json!({"header_value": "SECRET-5"})),
        ];
        for (kind, data) in cases {
            let cred = Credential::parse(kind, &data).expect("valid");
            for text in [format!("{cred:?}"), format!("{cred:#?}")] {
                assert!(!text.contains("SECRET"), "{text}");
                assert!(text.contains("credential_type"), "{text}");
                for key in data.as_object().expect("object").keys() {
                    assert!(text.contains(key.as_str()), "{text} lacks {key}");
                }
            }
        }
    }
}
