//! The HTTP API (DESIGN.md, "Interfaces"), on [`crate::http_server`].
//!
//! [`handle`] turns one request into one response and touches sockets nowhere, so routing,
//! authentication and error mapping are tested without a network. Every error is
//! `{"error": "..."}` with a status that says whose fault it is: 400 bad input, 401 no or
//! wrong token, 404 unknown route or row, 405 wrong method, 409 conflict, 503 the store is
//! unavailable. Bad input writes nothing: validation happens before any store call.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::Clock;
use crate::delivery::{ListFilter, MAX_PAGE, Redrive, Status};
use crate::enqueue::{EnqueueRequest, Enqueuer, prepare};
use crate::error::Error;
use crate::http_server::{Request, Response, Server, ServerConfig, ServerHandle};
use crate::json::{EnqueuedView, delivery_view, detail_view, page_view};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::vault::Vault;

/// Page size of `GET /v1/deliveries` when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 100;

/// Everything the handlers need.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub enqueuer: Arc<Enqueuer>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Accepted bearer tokens (`OUTBOX_API_TOKEN`). Empty: no authentication, which
    /// [`start`] allows only on a loopback address.
    pub api_tokens: Vec<String>,
    /// `max_attempts` of a delivery that does not say (`WEBHOOK_DELIVERY_MAX_ATTEMPTS`).
    pub default_max_attempts: u32,
}

/// Binds `listen` and serves the API until the returned handle is shut down or dropped.
///
/// # Errors
/// [`Error::Config`] when `listen` is not a loopback address and no token is configured
/// (anyone who could reach it could enqueue webhooks and replace credentials), when it does
/// not resolve, or when it cannot be bound.
pub fn start(listen: &str, state: ApiState, max_body_bytes: usize) -> crate::Result<ServerHandle> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("OUTBOX_LISTEN {listen:?} is not an address: {e}")))?
        .collect();
    if state.api_tokens.is_empty() && !all_loopback(&addrs) {
        return Err(Error::Config(format!(
            "OUTBOX_LISTEN {listen} is not a loopback address and OUTBOX_API_TOKEN is not set: \
             anyone who can reach it could enqueue webhooks and replace credentials. Set \
             OUTBOX_API_TOKEN, or listen on 127.0.0.1"
        )));
    }
    let config = ServerConfig {
        max_body_bytes,
        ..ServerConfig::default()
    };
    let server = Server::bind(listen, config)
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let state = Arc::new(state);
    server
        .serve(move |request| handle(&state, &request))
        .map_err(|e| Error::Config(format!("cannot serve on {listen}: {e}")))
}

/// Whether every address is a loopback one (an empty list is not).
fn all_loopback(addrs: &[SocketAddr]) -> bool {
    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
}

/// Answers one request, and logs one line about it at debug level (method, path, status:
/// never headers, bodies or query values).
pub fn handle(state: &ApiState, request: &Request) -> Response {
    let started = Instant::now();
    let response = route(state, request);
    log::debug!(
        "{} {} {} {}ms",
        request.method,
        request.path,
        response.status,
        started.elapsed().as_millis()
    );
    response
}

/// Which route a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Metrics,
    Deliveries,
    Delivery(&'a str),
    Redrive(&'a str),
    Credential(&'a str),
}

impl Route<'_> {
    /// The methods this route answers, for 405's `Allow`.
    fn allowed(self) -> &'static str {
        match self {
            Route::Healthz | Route::Metrics | Route::Delivery(_) => "GET",
            Route::Deliveries => "GET, POST",
            Route::Redrive(_) => "POST",
            Route::Credential(_) => "PUT, DELETE",
        }
    }
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match segments.as_slice() {
        ["healthz"] => Some(Route::Healthz),
        ["metrics"] => Some(Route::Metrics),
        ["v1", "deliveries"] => Some(Route::Deliveries),
        ["v1", "deliveries", id] if !id.is_empty() => Some(Route::Delivery(id)),
        ["v1", "deliveries", id, "redrive"] if !id.is_empty() => Some(Route::Redrive(id)),
        ["v1", "credentials", id] if !id.is_empty() => Some(Route::Credential(id)),
        _ => None,
    }
}

fn route(state: &ApiState, request: &Request) -> Response {
    let route = parse_route(&request.path);
    // Liveness stays open so a supervisor needs no token; everything else, known route or
    // not, asks for one first, so an unauthenticated caller learns nothing about the routes.
    if route != Some(Route::Healthz)
        && let Err(response) = authorize(&state.api_tokens, request)
    {
        return response;
    }
    let Some(route) = route else {
        return error(404, format!("no route for {}", request.path));
    };
    let method = request.method.as_str();
    match (route, method) {
        (Route::Healthz, "GET") => healthz(state),
        (Route::Metrics, "GET") => metrics(state),
        (Route::Deliveries, "POST") => enqueue(state, request),
        (Route::Deliveries, "GET") => list(state, request),
        (Route::Delivery(uuid), "GET") => show(state, uuid),
        (Route::Redrive(uuid), "POST") => redrive(state, uuid),
        (Route::Credential(uuid), "PUT") => put_credential(state, uuid, request),
        (Route::Credential(uuid), "DELETE") => delete_credential(state, uuid, request),
        _ => error(
            405,
            format!("{method} is not allowed here; use {}", route.allowed()),
        )
        .with_header("Allow", route.allowed()),
    }
}

/// Checks `Authorization: Bearer <token>` against the configured tokens.
fn authorize(tokens: &[String], request: &Request) -> Result<(), Response> {
    if tokens.is_empty() {
        return Ok(());
    }
    let unauthorized = |message: &str| {
        Err(error(401, message.to_owned()).with_header("WWW-Authenticate", "Bearer"))
    };
    let Some(given) = request
        .header("Authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return unauthorized("missing bearer token: send Authorization: Bearer <OUTBOX_API_TOKEN>");
    };
    // Every token is compared, so the time taken does not say which one came close.
    let mut ok = false;
    for token in tokens {
        ok |= constant_time_eq(given.as_bytes(), token.as_bytes());
    }
    if ok {
        Ok(())
    } else {
        unauthorized("wrong bearer token")
    }
}

/// Compares two byte strings in time that depends on their lengths only, not on where they
/// first differ, so a token cannot be guessed byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// A JSON response.
fn json_response(status: u16, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::new(status, "application/json", body),
        Err(e) => Response::new(
            500,
            "application/json",
            json!({ "error": format!("cannot render the response: {e}") }).to_string(),
        ),
    }
}

/// `{"error": message}`.
fn error(status: u16, message: String) -> Response {
    json_response(status, &json!({ "error": message }))
}

/// Maps a crate error to its status. Store failures are logged in full (the operator needs
/// the cause) and returned as they are: they name the database, never a secret.
fn error_response(e: &Error) -> Response {
    let status = match e {
        Error::Invalid(_) => 400,
        Error::OrganizationMismatch { .. } | Error::Conflict(_) => 409,
        Error::Unavailable(_)
        | Error::Pool { .. }
        | Error::Schema { .. }
        | Error::Sqlite { .. }
        | Error::Postgres { .. } => 503,
        Error::Config(_) | Error::Io { .. } => 500,
    };
    if status >= 500 {
        log::error!("API request failed: {e}");
    }
    error(status, e.to_string())
}

fn healthz(state: &ApiState) -> Response {
    // A cheap indexed query: enough to know the store answers.
    match state.store.next_due_at() {
        Ok(_) => json_response(200, &json!({"status": "ok"})),
        Err(e) => {
            log::error!("health check: the store does not answer: {e}");
            json_response(
                503,
                &json!({"status": "unavailable", "error": e.to_string()}),
            )
        }
    }
}

fn metrics(state: &ApiState) -> Response {
    match state.store.stats(state.clock.now()) {
        Ok(stats) => Response::new(
            200,
            "text/plain; version=0.0.4",
            state.metrics.render(&stats),
        ),
        Err(e) => error_response(&e),
    }
}

fn enqueue(state: &ApiState, request: &Request) -> Response {
    let req: EnqueueRequest = match serde_json::from_slice(&request.body) {
        Ok(req) => req,
        Err(e) => return error(400, format!("invalid request body: {e}")),
    };
    let prepared = match prepare(req, state.default_max_attempts, state.clock.now()) {
        Ok(p) => p,
        Err(message) => return error(400, message),
    };
    match state.enqueuer.enqueue(prepared.new) {
        Ok((delivery, created)) => json_response(
            if created { 201 } else { 200 },
            &EnqueuedView {
                created,
                delivery: delivery_view(&delivery),
                dropped_headers: &prepared.dropped_headers,
            },
        ),
        Err(e) => error_response(&e),
    }
}

fn show(state: &ApiState, uuid: &str) -> Response {
    match state.store.get(uuid) {
        Ok(Some(detail)) => json_response(200, &detail_view(&detail)),
        Ok(None) => error(404, format!("no delivery {uuid}")),
        Err(e) => error_response(&e),
    }
}

/// The filter of `GET /v1/deliveries` from its query.
///
/// # Errors
/// A message naming the parameter that is unknown or does not parse.
fn list_filter(pairs: &[(String, String)]) -> Result<ListFilter, String> {
    let mut filter = ListFilter {
        limit: DEFAULT_PAGE,
        ..ListFilter::default()
    };
    for (key, value) in pairs {
        let number = |name: &str| {
            value
                .parse::<i64>()
                .map_err(|_| format!("{name} must be a whole number, not {value:?}"))
        };
        match key.as_str() {
            "status" => filter.status = Some(Status::parse(value)?),
            "organization_id" => filter.organization_id = Some(number("organization_id")?),
            "after" => filter.after = Some(number("after")?),
            "limit" => {
                let limit = number("limit")?;
                if !(1..=i64::from(MAX_PAGE)).contains(&limit) {
                    return Err(format!("limit must be 1 to {MAX_PAGE}, not {limit}"));
                }
                filter.limit = limit as u32;
            }
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}: expected status, organization_id, limit or after"
                ));
            }
        }
    }
    Ok(filter)
}

fn list(state: &ApiState, request: &Request) -> Response {
    let filter = match list_filter(&request.query_pairs()) {
        Ok(f) => f,
        Err(message) => return error(400, message),
    };
    match state.store.list(&filter) {
        Ok(page) => json_response(200, &page_view(&page)),
        Err(e) => error_response(&e),
    }
}

fn redrive(state: &ApiState, uuid: &str) -> Response {
    match state.store.redrive(uuid, state.clock.now()) {
        Ok(Redrive::Redriven(delivery)) => {
            state.enqueuer.wake_engine();
            json_response(200, &delivery_view(&delivery))
        }
        Ok(Redrive::NotDeadLetter(status)) => error(
            409,
            format!(
                "delivery {uuid} is {}, not dead_letter: only dead letters are redriven",
                status.as_str()
            ),
        ),
        Ok(Redrive::NotFound) => error(404, format!("no delivery {uuid}")),
        Err(e) => error_response(&e),
    }
}

/// The body of `PUT /v1/credentials/{uuid}`, as the origin's credential rows.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialBody {
    organization_id: i64,
    credential_type: String,
    credential_data: Value,
}

fn put_credential(state: &ApiState, uuid: &str, request: &Request) -> Response {
    // serde's messages name fields and types, never the values, so a secret in a malformed
    // body does not come back in the error.
    let body: CredentialBody = match serde_json::from_slice(&request.body) {
        Ok(b) => b,
        Err(e) => return error(400, format!("invalid request body: {e}")),
    };
    match state.vault.put(
        uuid,
        body.organization_id,
        &body.credential_type,
        &body.credential_data,
        state.clock.now(),
    ) {
        Ok(created) => json_response(
            if created { 201 } else { 200 },
            &json!({
                "credential_uuid": uuid,
                "organization_id": body.organization_id,
                "credential_type": body.credential_type,
                "created": created,
            }),
        ),
        Err(e) => error_response(&e),
    }
}

fn delete_credential(state: &ApiState, uuid: &str, request: &Request) -> Response {
    let pairs = request.query_pairs();
    let organization_id = match pairs.as_slice() {
        [(key, value)] if key == "organization_id" => match value.parse::<i64>() {
            Ok(id) => id,
            Err(_) => {
                return error(
                    400,
                    format!("organization_id must be a whole number, not {value:?}"),
                );
            }
        },
        _ => {
            return error(
                400,
                "give the credential's organization: DELETE /v1/credentials/{uuid}?organization_id=N"
                    .to_owned(),
            );
        }
    };
    match state.vault.delete(uuid, organization_id) {
        Ok(true) => Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        },
        Ok(false) => error(
            404,
            format!("no credential {uuid} in organization {organization_id}"),
        ),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"xecret", b"secret"));
    }

    #[test]
    fn routes() {
        assert_eq!(parse_route("/healthz"), Some(Route::Healthz));
        assert_eq!(parse_route("/v1/deliveries"), Some(Route::Deliveries));
        assert_eq!(
            parse_route("/v1/deliveries/abc"),
            Some(Route::Delivery("abc"))
        );
        assert_eq!(
            parse_route("/v1/deliveries/abc/redrive"),
            Some(Route::Redrive("abc"))
        );
        assert_eq!(
            parse_route("/v1/credentials/c1"),
            Some(Route::Credential("c1"))
        );
        for path in [
            "",
            "/",
            "/v1",
            "/v1/deliveries/",
            "/v1/deliveries/a/b",
            "/v2/deliveries",
        ] {
            assert_eq!(parse_route(path), None, "{path}");
        }
    }

    #[test]
    fn list_filter_parses_and_refuses() {
        let pairs = |q: &[(&str, &str)]| -> Vec<(String, String)> {
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let f = list_filter(&pairs(&[
            ("status", "dead_letter"),
            ("organization_id", "7"),
            ("limit", "10"),
            ("after", "3"),
        ]))
        .unwrap();
        assert_eq!(f.status, Some(Status::DeadLetter));
        assert_eq!(
            (f.organization_id, f.limit, f.after),
            (Some(7), 10, Some(3))
        );
        assert_eq!(list_filter(&[]).unwrap().limit, DEFAULT_PAGE);
        for (k, v) in [
            ("status", "done"),
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "x"),
            ("after", "1.5"),
            ("organization_id", ""),
            ("colour", "red"),
        ] {
            let e = list_filter(&pairs(&[(k, v)])).unwrap_err();
            assert!(e.contains(k) || e.contains(v), "{k}={v}: {e}");
        }
    }

    #[test]
    fn loopback_check() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(all_loopback(&[a("127.0.0.1:1"), a("[::1]:1")]));
        assert!(!all_loopback(&[a("0.0.0.0:1")]));
        assert!(!all_loopback(&[a("127.0.0.1:1"), a("10.0.0.1:1")]));
        assert!(!all_loopback(&[]));
    }
}
