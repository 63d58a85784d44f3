//! Header rules: the secret-header filter and the headers of one attempt. Pure functions.

use crate::delivery::Header;

/// Markers matched against each word of a normalised header name.
///
/// The origin matched substrings, which dropped `X-Author-Name` ("auth" in "author") and missed
/// `X-Signature`, `Private-Key` and `AccessKey`. Matching whole words fixes both. "key" alone is
/// deliberately absent so `X-Idempotency-Key` survives; `session` is absent so a correlation id
/// such as `X-Session-Id` survives (`X-Session-Token` is caught by "token").
const SECRET_WORDS: &[&str] = &[
    "authorization",
    "authentication",
    "auth",
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "cookie",
    "credential",
    "credentials",
    "signature",
    "bearer",
    "jwt",
];

/// Compound markers, matched against a single word (`X-APIKEY`) and against two adjacent words
/// joined (`X-Api-Key`, `X-Api_Key`, `ApiKey` all give `api` + `key`). These are the places
/// where "key" does mean a secret.
const SECRET_COMPOUNDS: &[&str] = &[
    "apikey",
    "accesskey",
    "privatekey",
    "secretkey",
    "masterkey",
    "subscriptionkey",
    "signingkey",
    "authtoken",
    "accesstoken",
];

/// Custom headers split into those to store and send and the names of those dropped as secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilteredHeaders {
    /// Headers to keep, in their original order, names trimmed.
    pub kept: Vec<Header>,
    /// Names of headers that look like secrets, so the API can tell the caller to use a
    /// credential instead.
    pub dropped: Vec<String>,
}

/// Splits a header name into lower-case words on `-`, `_`, space, `.` and camelCase boundaries
/// (`XApiKey` → `x`, `api`, `key`; `APIKey` → `api`, `key`).
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in name
        .trim()
        .split(|c: char| matches!(c, '-' | '_' | '.') || c.is_whitespace())
    {
        let chars: Vec<char> = part.chars().collect();
        let mut start = 0;
        for i in 1..chars.len() {
            let (prev, cur) = (chars[i - 1], chars[i]);
            let next_lower = chars.get(i + 1).is_some_and(|c| c.is_lowercase());
            // aB or 9B starts a word; so does the last capital of an acronym (APIKey: K).
            let boundary = cur.is_uppercase()
                && (prev.is_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_uppercase() && next_lower));
            if boundary {
                out.push(chars[start..i].iter().collect::<String>().to_lowercase());
                start = i;
            }
        }
        if start < chars.len() {
            out.push(chars[start..].iter().collect::<String>().to_lowercase());
        }
    }
    // `OAuth` splits like `XApi` into `o` + `auth`; glue it back so `X-OAuth-Client` is not
    // read as an auth header (an OAuth client id is not a secret; `X-OAuth-Token` still is).
    let mut merged: Vec<String> = Vec::with_capacity(out.len());
    for w in out {
        match merged.last_mut() {
            Some(prev) if prev == "o" && w.starts_with("auth") => prev.push_str(&w),
            _ => merged.push(w),
        }
    }
    merged
}

/// Whether a custom header name looks like it carries a secret, which belongs in a credential
/// (resolved at send time, never stored with the delivery) rather than in plain custom headers.
pub fn is_secret_header(name: &str) -> bool {
    let words = words(name);
    let word_hit = words
        .iter()
        .any(|w| SECRET_WORDS.contains(&w.as_str()) || SECRET_COMPOUNDS.contains(&w.as_str()));
    word_hit
        || words
            .windows(2)
            .any(|pair| SECRET_COMPOUNDS.contains(&format!("{}{}", pair[0], pair[1]).as_str()))
}

/// Filters custom headers at enqueue time, as the origin's `_safe_custom_headers`.
///
/// Entries whose trimmed name or whose value is empty are skipped silently (the origin ignored
/// them too); secret-looking ones go to `dropped`. Order is kept.
pub fn filter_custom_headers(headers: &[Header]) -> FilteredHeaders {
    let mut out = FilteredHeaders::default();
    for h in headers {
        let key = h.key.trim();
        if key.is_empty() || h.value.is_empty() {
            continue;
        }
        if is_secret_header(key) {
            out.dropped.push(key.to_owned());
        } else {
            out.kept.push(Header {
                key: key.to_owned(),
                value: h.value.clone(),
            });
        }
    }
    out
}

/// Sets `name`, replacing any earlier header of the same name (compared case-insensitively, as
/// HTTP does; the origin's dict was case-sensitive and could send both `authorization` and
/// `Authorization`). The new spelling wins and moves to the end.
fn set(headers: &mut Vec<(String, String)>, name: &str, value: String) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_owned(), value));
}

/// The headers of one attempt, in the origin's order (section 4), later entries replacing
/// earlier ones of the same name:
/// 1. `Content-Type: application/json`, only when there is a body (the origin sent it on GET
///    and DELETE too);
/// 2. the credential's header;
/// 3. custom headers (empty names or values skipped);
/// 4. `X-Dograh-Delivery-Id`, `X-Dograh-Workflow-Run-Id`, `X-Dograh-Delivery-Attempt`, which
///    always win so receivers can trust them for deduplication.
pub fn request_headers(
    has_body: bool,
    auth: Option<&(String, String)>,
    custom: &[Header],
    delivery_uuid: &str,
    workflow_run_id: i64,
    attempt: u32,
) -> Vec<(String, String)> {
    let mut headers = Vec::with_capacity(custom.len() + 5);
    if has_body {
        set(&mut headers, "Content-Type", "application/json".to_owned());
    }
    if let Some((name, value)) = auth {
        set(&mut headers, name, value.clone());
    }
    for h in custom {
        let key = h.key.trim();
        if !key.is_empty() && !h.value.is_empty() {
            set(&mut headers, key, h.value.clone());
        }
    }
    set(
        &mut headers,
        "X-Dograh-Delivery-Id",
        delivery_uuid.to_owned(),
    );
    set(
        &mut headers,
        "X-Dograh-Workflow-Run-Id",
        workflow_run_id.to_string(),
    );
    set(
        &mut headers,
        "X-Dograh-Delivery-Attempt",
        attempt.to_string(),
    );
    headers
}

/// Whether `name` is a valid HTTP field name (an RFC 9110 `token`).
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may be sent as an HTTP field value: no CR, LF, NUL or other control
/// characters except tab, which would let a value inject extra headers or break framing.
pub fn is_valid_header_value(value: &str) -> bool {
    value.chars().all(|c| c == '\t' || !c.is_control())
}

const INVALID_URL: &str = "<invalid url>";

/// `scheme://host:port` of `url`, for log lines: never the path, query, fragment or userinfo,
/// which may hold tokens. The port is always shown, filled in from the scheme when absent
/// (http/ws 80, https/wss 443; another scheme without a port shows none). Anything that does
/// not parse gives `<invalid url>`, so garbage (or a newline meant to forge a log line) never
/// reaches the log.
pub fn url_origin(url: &str) -> String {
    parse_origin(url.trim()).unwrap_or_else(|| INVALID_URL.to_owned())
}

fn parse_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    // A backslash ends the authority as browsers and WHATWG parsers treat it, so
    // `https://evil.example\@good.example/` logs the host that is really contacted.
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    // Userinfo ends at the last `@`; a password may itself contain `@`.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (inner, after) = v6.split_once(']')?;
        let ok = !inner.is_empty()
            && inner.chars().all(|c| {
                c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '%') || c.is_ascii_alphanumeric()
            });
        if !ok {
            return None;
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", inner.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        };
        let ok = !host.is_empty()
            && host.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || "-._~%!$&'()*+,;=".contains(c)
                    || !c.is_ascii() && !c.is_control() && !c.is_whitespace()
            });
        if !ok {
            return None;
        }
        (host.to_lowercase(), port)
    };
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(p.parse::<u16>().ok()?)
        }
        None => match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        },
    };
    Some(match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: &str, value: &str) -> Header {
        Header {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn secret_header_table() {
        let cases: &[(&str, bool)] = &[
            // Secret.
            ("Authorization", true),
            ("authorization", true),
            ("  AUTHORIZATION  ", true),
            ("X-Custom-Auth-Token", true),
            ("X-API-Key", true),
            ("X-Api_Key", true),
            ("x-api-key", true),
            ("X-APIKEY", true),
            ("ApiKey", true),
            ("apiKey", true),
            ("XApiKey", true),
            ("X-Access_Key", true),
            ("AccessKey", true),
            ("Private-Key", true),
            ("X-Signature", true),
            ("X-Hub-Signature-256", true),
            ("Cookie", true),
            ("Set-Cookie", true),
            ("X-Session-Token", true),
            ("Proxy-Authorization", true),
            ("X-Password", true),
            ("X-Client-Secret", true),
            ("X-Auth", true),
            ("X-Auth-Key", true),
            ("X-Authtoken", true),
            ("X-Amz-Security-Token", true),
            ("Ocp-Apim-Subscription-Key", true),
            ("X.Api.Key", true),
            ("x api key", true),
            ("X-Credentials", true),
            ("X-JWT", true),
            ("X-Secret-Key", true),
            ("X-OAuth-Token", true),
            // Kept.
            ("X-Idempotency-Key", false),
            ("X-Source", false),
            ("X-Author-Name", false),
            ("Content-Type", false),
            ("X-Request-Id", false),
            ("X-Tenant", false),
            ("X-OAuth-Client", false),
            ("X-Session-Id", false),
            ("X-Key", false),
            ("X-Tokenizer-Version", false),
            ("X-Api-Version", false),
            ("Accept", false),
            ("", false),
        ];
        for (name, secret) in cases {
            assert_eq!(is_secret_header(name), *secret, "header {name:?}");
        }
    }

    #[test]
    fn words_split_table() {
        let cases: &[(&str, &[&str])] = &[
            ("X-Api_Key", &["x", "api", "key"]),
            ("APIKey", &["api", "key"]),
            ("XApiKey", &["x", "api", "key"]),
            ("Sha256Signature", &["sha256", "signature"]),
            ("  a.b c ", &["a", "b", "c"]),
            ("HTTP", &["http"]),
            ("X-OAuth-Client", &["x", "oauth", "client"]),
        ];
        for (name, want) in cases {
            assert_eq!(words(name), *want, "name {name:?}");
        }
    }

    #[test]
    fn filter_custom_headers_drops_secrets_and_skips_empty() {
        let input = [
            h("Authorization", "Bearer secret-token"),
            h("X-Custom-Auth-Token", "abc"),
            h("X-Idempotency-Key", "idem-1"),
            h("  ", "blank name"),
            h("X-Empty", ""),
            h(" X-Source ", "dograh"),
            h("X-Api_Key", "k"),
        ];
        let got = filter_custom_headers(&input);
        assert_eq!(
            got,
            FilteredHeaders {
                kept: vec![h("X-Idempotency-Key", "idem-1"), h("X-Source", "dograh")],
                dropped: vec![
                    "Authorization".to_owned(),
                    "X-Custom-Auth-Token".to_owned(),
                    "X-Api_Key".to_owned()
                ],
            }
        );
        assert_eq!(filter_custom_headers(&[]), FilteredHeaders::default());
    }

    fn names(headers: &[(String, String)]) -> Vec<&str> {
        headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn request_headers_order_and_content_type() {
        let auth = ("Authorization".to_owned(), "Bearer t".to_owned());
        let got = request_headers(true, Some(&auth), &[h("X-Source", "s")], "uuid-1", 42, 3);
        assert_eq!(
            got,
            vec![
                ("Content-Type".to_owned(), "application/json".to_owned()),
                ("Authorization".to_owned(), "Bearer t".to_owned()),
                ("X-Source".to_owned(), "s".to_owned()),
                ("X-Dograh-Delivery-Id".to_owned(), "uuid-1".to_owned()),
                ("X-Dograh-Workflow-Run-Id".to_owned(), "42".to_owned()),
                ("X-Dograh-Delivery-Attempt".to_owned(), "3".to_owned()),
            ]
        );
        // GET/DELETE: no body, no Content-Type.
        let got = request_headers(false, None, &[], "u", 1, 1);
        assert_eq!(
            names(&got),
            vec![
                "X-Dograh-Delivery-Id",
                "X-Dograh-Workflow-Run-Id",
                "X-Dograh-Delivery-Attempt"
            ]
        );
    }

    #[test]
    fn request_headers_replacement_table() {
        let auth = ("X-API-Key".to_owned(), "cred".to_owned());
        // (custom headers, expected (name, value) that must appear exactly once)
        let cases: Vec<(Vec<Header>, (&str, &str))> = vec![
            // Custom overrides the credential, case-insensitively, keeping its own spelling.
            (vec![h("x-api-key", "custom")], ("x-api-key", "custom")),
            // Custom overrides Content-Type.
            (
                vec![h("content-type", "text/plain")],
                ("content-type", "text/plain"),
            ),
            // Later custom entry wins over an earlier one.
            (vec![h("X-A", "1"), h("x-a", "2")], ("x-a", "2")),
            // X-Dograh-* always win.
            (
                vec![h("x-dograh-delivery-id", "forged")],
                ("X-Dograh-Delivery-Id", "u"),
            ),
            (
                vec![h("X-DOGRAH-DELIVERY-ATTEMPT", "99")],
                ("X-Dograh-Delivery-Attempt", "2"),
            ),
            // Empty entries are ignored rather than clearing anything.
            (vec![h("X-API-Key", ""), h(" ", "v")], ("X-API-Key", "cred")),
        ];
        for (custom, (name, value)) in cases {
            let got = request_headers(true, Some(&auth), &custom, "u", 7, 2);
            let matching: Vec<_> = got
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .collect();
            assert_eq!(
                matching,
                vec![&(name.to_owned(), value.to_owned())],
                "custom {custom:?}"
            );
            let mut lower: Vec<String> = got.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
            let len = lower.len();
            lower.sort();
            lower.dedup();
            assert_eq!(lower.len(), len, "duplicate names in {got:?}");
        }
    }

    #[test]
    fn header_validity_table() {
        assert!(is_valid_header_name("X-API-Key"));
        assert!(is_valid_header_name("x_custom.1~"));
        assert!(!is_valid_header_name(""));
        assert!(!is_valid_header_name("X Key"));
        assert!(!is_valid_header_name("X-Key:"));
        assert!(!is_valid_header_name("X-Ké"));
        assert!(is_valid_header_value("Bearer abc\tdef"));
        assert!(is_valid_header_value(""));
        assert!(!is_valid_header_value("a\r\nX-Evil: 1"));
        assert!(!is_valid_header_value("a\nb"));
        assert!(!is_valid_header_value("a\0b"));
    }

    #[test]
    fn url_origin_table() {
        let cases: &[(&str, &str)] = &[
            ("https://example.com/hook", "https://example.com:443"),
            ("http://example.com", "http://example.com:80"),
            (
                "HTTPS://Example.COM:8443/a?b=c#d",
                "https://example.com:8443",
            ),
            (
                "https://user:p%40ss@example.com/x",
                "https://example.com:443",
            ),
            (
                "https://user:p@ss@example.com:9000/x",
                "https://example.com:9000",
            ),
            (
                "https://example.com?token=secret",
                "https://example.com:443",
            ),
            ("https://example.com#frag", "https://example.com:443"),
            ("http://[::1]:8080/path", "http://[::1]:8080"),
            ("http://[2001:DB8::1]/", "http://[2001:db8::1]:80"),
            (
                "https://u@[fe80::1%25eth0]:1/",
                "https://[fe80::1%25eth0]:1",
            ),
            ("http://127.0.0.1:3000/x", "http://127.0.0.1:3000"),
            ("http://example.com:/x", "http://example.com:80"),
            ("  https://example.com  ", "https://example.com:443"),
            ("ftp://files.example", "ftp://files.example"),
            ("ftp://files.example:21", "ftp://files.example:21"),
            // Garbage.
            ("", INVALID_URL),
            ("not a url", INVALID_URL),
            ("example.com/hook", INVALID_URL),
            ("https://", INVALID_URL),
            ("https:///path", INVALID_URL),
            ("https://exa mple.com/", INVALID_URL),
            ("https://example.com:99999/", INVALID_URL),
            ("https://example.com:80a/", INVALID_URL),
            ("https://[::1/", INVALID_URL),
            ("https://[::1]x/", INVALID_URL),
            ("https://[]/", INVALID_URL),
            ("https://evil.com\\@good.com/", "https://evil.com:443"),
            ("https://a.com\nFAKE LOG", INVALID_URL),
            ("1http://example.com", INVALID_URL),
        ];
        for (url, want) in cases {
            assert_eq!(url_origin(url), *want, "url {url:?}");
        }
    }
}
