//! Enqueueing: the request body of `POST /v1/deliveries` (also what `outbox enqueue` reads),
//! its validation into a [`NewDelivery`] (pure), and the [`Enqueuer`], which writes
//! concurrent enqueues in shared commits.
//!
//! Why group commit: with SQLite `synchronous=FULL` every commit is an fsync, a few
//! milliseconds on ordinary disks. One commit per request would cap the API at a few hundred
//! enqueues per second; one commit for everything that arrived while the previous commit was
//! syncing scales with the number of concurrent callers instead.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::delivery::{Delivery, Header, METHODS, NewDelivery};
use crate::engine::Waker;
use crate::error::{Error, Result};
use crate::headers::{filter_custom_headers, is_valid_header_name, is_valid_header_value};
use crate::metrics::Metrics;
use crate::priority;
use crate::render::build_payload;
use crate::store::Store;

/// Most attempts a delivery may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest `webhook_node_id`, in characters.
pub const MAX_NODE_ID_CHARS: usize = 255;
/// Longest `webhook_name`, in characters.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest `endpoint_url`, in bytes (common server and proxy limits are around 8 KiB).
pub const MAX_URL_BYTES: usize = 8192;
/// Longest `credential_uuid`, in characters (the vault's limit).
pub const MAX_CREDENTIAL_UUID_CHARS: usize = 200;
/// Most custom headers on one delivery.
pub const MAX_CUSTOM_HEADERS: usize = 100;
/// Most deliveries written in one commit by the [`Enqueuer`].
pub const MAX_BATCH: usize = 512;

/// The body of `POST /v1/deliveries`. Unknown fields are refused, so a typo (`max_attempt`)
/// is an error rather than a silently ignored setting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    pub organization_id: i64,
    pub workflow_run_id: i64,
    pub webhook_node_id: String,
    pub endpoint_url: String,
    pub webhook_name: Option<String>,
    /// Default `POST`; any case, stored upper-case.
    pub http_method: Option<String>,
    /// A finished payload, stored and sent byte for byte (no `call_disposition` injection).
    pub payload: Option<Box<RawValue>>,
    /// A `{{ var }}` template rendered once against `render_context`. With neither this nor
    /// `payload`, the template is `{}` (so the payload is `{"call_disposition": ""}` at least).
    pub payload_template: Option<Value>,
    /// The variables for `payload_template`: an object. Default `{}`.
    pub render_context: Option<Value>,
    /// `[{"key": ..., "value": ...}]`; secret-looking ones are dropped (see
    /// [`crate::headers::is_secret_header`]).
    pub custom_headers: Option<Vec<Header>>,
    /// A credential of the same organization, resolved at each attempt.
    pub credential_uuid: Option<String>,
    /// 1..=100. Default: the configured `WEBHOOK_DELIVERY_MAX_ATTEMPTS`.
    pub max_attempts: Option<u32>,
}

/// A validated enqueue, ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub new: NewDelivery,
    /// Names of custom headers dropped because they look like secrets, so the caller learns
    /// that they will not be sent (the origin dropped them silently).
    pub dropped_headers: Vec<String>,
}

/// Validates `req` and builds the delivery: renders the payload template once (at `now`) and
/// filters custom headers. Pure: no I/O except a warning log per dropped header (its name,
/// never its value).
///
/// # Errors
/// A message naming the offending field when a value is invalid; nothing is written then.
pub fn prepare(
    req: EnqueueRequest,
    default_max_attempts: u32,
    now: OffsetDateTime,
) -> std::result::Result<Prepared, String> {
    let node_chars = req.webhook_node_id.chars().count();
    if node_chars == 0 || node_chars > MAX_NODE_ID_CHARS {
        return Err(format!(
            "webhook_node_id must be 1 to {MAX_NODE_ID_CHARS} characters, not {node_chars}"
        ));
    }
    if let Some(name) = &req.webhook_name
        && name.chars().count() > MAX_NAME_CHARS
    {
        return Err(format!(
            "webhook_name must be at most {MAX_NAME_CHARS} characters"
        ));
    }
    validate_endpoint_url(&req.endpoint_url)?;
    let http_method = match &req.http_method {
        None => "POST".to_owned(),
        Some(m) => {
            let upper = m.trim().to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                return Err(format!(
                    "http_method {m:?} is not supported: expected one of {}",
                    METHODS.join(", ")
                ));
            }
            upper
        }
    };
    let max_attempts = req.max_attempts.unwrap_or(default_max_attempts);
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
        return Err(format!(
            "max_attempts must be 1 to {MAX_ATTEMPTS_LIMIT}, not {max_attempts}"
        ));
    }
    if let Some(uuid) = &req.credential_uuid {
        let chars = uuid.chars().count();
        if uuid.trim().is_empty() || chars > MAX_CREDENTIAL_UUID_CHARS {
            return Err(format!(
                "credential_uuid must be 1 to {MAX_CREDENTIAL_UUID_CHARS} characters \
                 (omit it for no credential)"
            ));
        }
    }
    let payload = payload_text(
        req.payload,
        req.payload_template.as_ref(),
        req.render_context.as_ref(),
        now,
    )?;
    let headers = req.custom_headers.unwrap_or_default();
    validate_headers(&headers)?;
    let filtered = filter_custom_headers(&headers);
    for name in &filtered.dropped {
        log::warn!(
            "custom header '{name}' looks like a secret; it will not be stored or sent. \
             Use a credential instead."
        );
    }
    Ok(Prepared {
        new: NewDelivery {
            organization_id: req.organization_id,
            workflow_run_id: req.workflow_run_id,
            webhook_node_id: req.webhook_node_id,
            webhook_name: req.webhook_name,
            endpoint_url: req.endpoint_url,
            http_method,
            payload,
            custom_headers: filtered.kept,
            credential_uuid: req.credential_uuid,
            max_attempts,
            scheduled_for: None,
        },
        dropped_headers: filtered.dropped,
    })
}

/// The frozen payload text: `payload` verbatim, or `payload_template` rendered once.
fn payload_text(
    payload: Option<Box<RawValue>>,
    template: Option<&Value>,
    context: Option<&Value>,
    now: OffsetDateTime,
) -> std::result::Result<String, String> {
    if let Some(ctx) = context
        && !ctx.is_object()
    {
        return Err("render_context must be a JSON object".to_owned());
    }
    match (payload, template) {
        (Some(_), Some(_)) => Err("give either payload or payload_template, not both".to_owned()),
        (Some(_), None) if context.is_some() => Err(
            "render_context is only used with payload_template; a payload is stored as given"
                .to_owned(),
        ),
        (Some(raw), None) => Ok(raw.get().to_owned()),
        (None, template) => {
            let empty = Value::Object(Map::new());
            let rendered = build_payload(template, context.unwrap_or(&empty), now);
            serde_json::to_string(&rendered).map_err(|e| format!("payload_template: {e}"))
        }
    }
}

/// Checks custom headers before filtering: a name that is not an HTTP token or a value with
/// CR/LF could break the request or inject headers. Entries with an empty name or value are
/// skipped later (as the origin did), so they pass here.
fn validate_headers(headers: &[Header]) -> std::result::Result<(), String> {
    if headers.len() > MAX_CUSTOM_HEADERS {
        return Err(format!(
            "custom_headers has {} entries; at most {MAX_CUSTOM_HEADERS} are allowed",
            headers.len()
        ));
    }
    for (i, h) in headers.iter().enumerate() {
        let key = h.key.trim();
        if key.is_empty() || h.value.is_empty() {
            continue;
        }
        if !is_valid_header_name(key) {
            // The name may hold anything, so it is described, not echoed.
            return Err(format!(
                "custom_headers[{i}].key is not a valid HTTP header name \
                 (letters, digits and !#$%&'*+-.^_`|~ only)"
            ));
        }
        if !is_valid_header_value(&h.value) {
            return Err(format!(
                "custom_headers[{i}].value ({key}) contains control characters such as CR or LF"
            ));
        }
    }
    Ok(())
}

/// Accepts an absolute `http://` or `https://` URL with a host, and nothing a receiver or a
/// log line could misread: no whitespace or control characters anywhere.
fn validate_endpoint_url(url: &str) -> std::result::Result<(), String> {
    if url.is_empty() {
        return Err("endpoint_url is required".to_owned());
    }
    if url.len() > MAX_URL_BYTES {
        return Err(format!("endpoint_url is longer than {MAX_URL_BYTES} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("endpoint_url must not contain whitespace or control characters".to_owned());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "endpoint_url {url:?} is not an absolute URL: expected http://host/... or https://host/..."
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "endpoint_url scheme {scheme:?} is not supported: expected http or https"
        ));
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((inside, after)) = v6.split_once(']') else {
            return Err("endpoint_url has an unclosed IPv6 address".to_owned());
        };
        check_port(after.strip_prefix(':'), after.is_empty())?;
        inside
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => {
                check_port(Some(port), false)?;
                host
            }
            None => host_port,
        }
    };
    if host.is_empty() {
        return Err(format!("endpoint_url {url:?} has no host"));
    }
    Ok(())
}

/// `port` is the text after `:` (None when there was none); `none_ok` says whether no port at
/// all is fine.
fn check_port(port: Option<&str>, none_ok: bool) -> std::result::Result<(), String> {
    match port {
        None if none_ok => Ok(()),
        Some(p) if p.parse::<u16>().is_ok_and(|n| n > 0) => Ok(()),
        _ => Err("endpoint_url has an invalid port (expected 1 to 65535)".to_owned()),
    }
}

/// One enqueue waiting for the writer thread, and where to send its result.
struct Job {
    /// Boxed, so the channel's slots (all allocated and touched when it is made) are two
    /// pointers, not a whole delivery each: 12 KiB for [`MAX_BATCH`] slots instead of 112.
    new: Box<NewDelivery>,
    reply: Arc<Reply>,
}

/// What an enqueue answers: the delivery and whether this call created it.
type Answer = Result<(Delivery, bool)>;

/// A one-shot answer slot. The caller parks on the condvar at once: a channel's receive spins
/// and yields first, which cost ~10% of the API's CPU while callers wait ~1 ms for a commit.
#[derive(Default)]
struct Reply {
    /// The answer, and the next caller of the same commit to wake (see [`answer_all`]).
    slot: Mutex<Option<(Answer, Option<Arc<Reply>>)>>,
    ready: Condvar,
}

/// Answers a commit's callers. The writer wakes only the first; each caller wakes the next
/// when it takes its answer. Waking a caller is a system call (~4-5 us here): made by the
/// writer for every caller, they delayed its next commit by ~33 us.
fn answer_all(answers: Vec<(Arc<Reply>, Answer)>) {
    let mut next: Option<Arc<Reply>> = None;
    for (reply, result) in answers.into_iter().rev() {
        *reply.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((result, next));
        next = Some(reply);
    }
    if let Some(first) = next {
        first.ready.notify_one();
    }
}

impl Reply {
    /// Waits for the answer, and wakes the next caller of the same commit. If the writer
    /// dropped its handle unanswered (it panicked), the caller is told so instead of waiting
    /// forever.
    fn wait(self: &Arc<Self>) -> Answer {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some((result, next)) = slot.take() {
                drop(slot);
                if let Some(next) = next {
                    next.ready.notify_one();
                }
                return result;
            }
            if Arc::strong_count(self) == 1 {
                return Err(Error::Unavailable("the enqueuer has stopped".to_owned()));
            }
            slot = self
                .ready
                .wait_timeout(slot, std::time::Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Writes enqueues through one thread that commits whatever has queued up in one transaction,
/// so concurrent callers share commits. A result is returned only after its commit: an `Ok`
/// means the delivery is durable (subject to the store's sync setting).
pub struct Enqueuer {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    waker: Option<Waker>,
}

impl Enqueuer {
    /// Starts the writer thread. `waker` (the engine's, if it runs in this process) is woken
    /// after every commit that created something.
    pub fn start(
        store: Arc<dyn Store>,
        waker: Option<Waker>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Enqueuer {
        // Bounded so a stalled store pushes back on callers instead of queueing without limit.
        // One batch's worth: each caller has one job queued at most, so this binds only past
        // MAX_BATCH concurrent callers. The slots are allocated and touched up front (see
        // `Job`): 8 batches' worth of unboxed jobs held 0.9 MiB of an idle service's memory.
        let (tx, rx) = crossbeam_channel::bounded::<Job>(MAX_BATCH);
        let thread_waker = waker.clone();
        let thread = std::thread::Builder::new()
            .name("outbox-enqueuer".into())
            .spawn(move || writer(&*store, thread_waker.as_ref(), &metrics, &*clock, &rx));
        match thread {
            Ok(thread) => Enqueuer {
                jobs: Some(tx),
                thread: Some(thread),
                waker,
            },
            Err(e) => {
                // Without the thread every enqueue answers Unavailable (below) rather than hang.
                log::error!("cannot start the enqueue thread: {e}");
                Enqueuer {
                    jobs: None,
                    thread: None,
                    waker,
                }
            }
        }
    }

    /// Get-or-creates one delivery on `(workflow_run_id, webhook_node_id)`, committed together
    /// with whatever other enqueues are waiting. Returns the delivery and whether it was created.
    ///
    /// # Errors
    /// [`Error::OrganizationMismatch`] when the run belongs to another organization;
    /// [`Error::Unavailable`] when the store failed the batch (nothing written; retry) or the
    /// enqueuer has stopped.
    pub fn enqueue(&self, new: NewDelivery) -> Result<(Delivery, bool)> {
        let stopped = || Error::Unavailable("the enqueuer has stopped".to_owned());
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        let reply = Arc::new(Reply::default());
        jobs.send(Job {
            new: Box::new(new),
            reply: Arc::clone(&reply),
        })
        .map_err(|_| stopped())?;
        reply.wait()
    }

    /// Wakes the engine (if it runs in this process), after a write other than an enqueue made
    /// something due, such as a redrive.
    pub fn wake_engine(&self) {
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// Stops the writer thread after it has answered every enqueue already sent.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Closing the channel ends the thread's loop once the queue is empty.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Enqueuer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer(
    store: &dyn Store,
    waker: Option<&Waker>,
    metrics: &Metrics,
    clock: &dyn Clock,
    jobs: &Receiver<Job>,
) {
    if !priority::set_current_thread_nice(priority::WRITER_NICE) {
        log::info!(
            "the enqueue writer runs at the default priority; enqueues under load are faster \
             when it may run at nice {} (systemd: LimitNICE={0})",
            priority::WRITER_NICE
        );
    }
    let mut news: Vec<NewDelivery> = Vec::with_capacity(MAX_BATCH);
    let mut replies: Vec<Arc<Reply>> = Vec::with_capacity(MAX_BATCH);
    // Blocks for the first job; everything that queued up meanwhile joins its commit.
    while let Ok(first) = jobs.recv() {
        let mut next = Some(first);
        while let Some(job) = next {
            news.push(*job.new);
            replies.push(job.reply);
            next = if news.len() < MAX_BATCH {
                jobs.try_recv().ok()
            } else {
                None
            };
        }
        let mut created = 0u64;
        match store.create_many(&news, clock.now()) {
            Ok(results) => {
                let mut results = results.into_iter();
                let answers = replies
                    .drain(..)
                    .map(|reply| {
                        let result = results.next().unwrap_or_else(|| {
                            Err(Error::Unavailable(
                                "the store returned fewer results than deliveries".to_owned(),
                            ))
                        });
                        if matches!(result, Ok((_, true))) {
                            created += 1;
                        }
                        (reply, result)
                    })
                    .collect();
                answer_all(answers);
            }
            Err(e) => {
                let message = e.to_string();
                log::error!("enqueue batch of {} failed: {message}", news.len());
                answer_all(
                    replies
                        .drain(..)
                        .map(|reply| (reply, Err(Error::Unavailable(message.clone()))))
                        .collect(),
                );
            }
        }
        news.clear();
        if created > 0 {
            metrics.enqueued.fetch_add(created, Ordering::Relaxed);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-05-01 12:00:00 UTC);

    /// A valid body with `extra` fields merged in (a null removes a field).
    fn body(extra: Value) -> String {
        let mut base = json!({
            "organization_id": 7,
            "workflow_run_id": 42,
            "webhook_node_id": "node-1",
            "endpoint_url": "https://example.com/hook",
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    b.insert(k, v);
                }
            }
        }
        base.to_string()
    }

    fn run(body: &str) -> std::result::Result<Prepared, String> {
        let req: EnqueueRequest = serde_json::from_str(body).map_err(|e| e.to_string())?;
        prepare(req, 5, NOW)
    }

    /// A distinct answer for each of `replies`, in order.
    fn answers(replies: &[Arc<Reply>]) -> Vec<(Arc<Reply>, Answer)> {
        replies
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    Arc::clone(r),
                    Err(Error::Unavailable(format!("answer {i}"))),
                )
            })
            .collect()
    }

    #[test]
    fn each_answer_of_a_commit_links_the_next_caller_to_wake() {
        let replies: Vec<Arc<Reply>> = (0..3).map(|_| Arc::new(Reply::default())).collect();
        answer_all(answers(&replies));
        for (i, reply) in replies.iter().enumerate() {
            let slot = reply.slot.lock().unwrap();
            let (result, next) = slot.as_ref().expect("answered");
            assert!(matches!(result, Err(Error::Unavailable(m)) if *m == format!("answer {i}")));
            match replies.get(i + 1) {
                Some(following) => assert!(Arc::ptr_eq(next.as_ref().unwrap(), following)),
                None => assert!(next.is_none(), "the last wakes no one"),
            }
        }
    }

    #[test]
    fn every_waiting_caller_of_a_commit_gets_its_own_answer() {
        let replies: Vec<Arc<Reply>> = (0..5).map(|_| Arc::new(Reply::default())).collect();
        let waiters: Vec<_> = replies
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, reply)| std::thread::spawn(move || (i, reply.wait())))
            .collect();
        answer_all(answers(&replies));
        for waiter in waiters {
            let (i, result) = waiter.join().unwrap();
            assert!(matches!(result, Err(Error::Unavailable(m)) if m == format!("answer {i}")));
        }
    }

    /// Every enqueue waits on the writer thread, so it asks for [`priority::WRITER_NICE`];
    /// where the process may not lower a nice value, it keeps the process's and still works.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_writer_thread_runs_at_writer_nice_where_allowed() {
        use crate::priority::probe::{current_tid, nice_of, threads_named};
        let allowed =
            std::thread::spawn(|| priority::set_current_thread_nice(priority::WRITER_NICE))
                .join()
                .unwrap();
        let expected = if allowed {
            priority::WRITER_NICE
        } else {
            nice_of(&current_tid())
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db").to_string_lossy().into_owned();
        let store = crate::store::open(&path, &crate::store::StoreOptions::default()).unwrap();
        store.migrate_up().unwrap();
        let enqueuer = Enqueuer::start(
            store,
            None,
            Arc::new(Metrics::default()),
            Arc::new(crate::clock::SystemClock),
        );
        // Answered only by the writer's loop, which the priority call comes before.
        let (_, created) = enqueuer
            .enqueue(run(&body(json!({}))).unwrap().new)
            .unwrap();
        assert!(created);
        let writers = threads_named("outbox-enqueuer");
        assert_eq!(writers.len(), 1, "no other test starts an enqueuer");
        assert_eq!(nice_of(&writers[0]), expected, "allowed: {allowed}");
        enqueuer.shutdown();
    }

    #[test]
    fn defaults() {
        let p = run(&body(json!({}))).unwrap();
        assert_eq!(p.new.http_method, "POST");
        assert_eq!(p.new.max_attempts, 5);
        assert_eq!(p.new.payload, r#"{"call_disposition":""}"#);
        assert!(p.new.custom_headers.is_empty());
        assert!(p.dropped_headers.is_empty());
    }

    #[test]
    fn payload_is_kept_byte_for_byte() {
        let raw = r#"{"organization_id":7,"workflow_run_id":42,"webhook_node_id":"n",
            "endpoint_url":"http://h/","payload": {"b": 1.50, "a":"ü" }}"#;
        let p = run(raw).unwrap();
        assert_eq!(p.new.payload, r#"{"b": 1.50, "a":"ü" }"#);
    }

    #[test]
    fn template_is_rendered_once_with_disposition() {
        let p = run(&body(json!({
            "payload_template": {"run": "{{workflow_run_id}}"},
            "render_context": {"workflow_run_id": 42,
                               "gathered_context": {"call_disposition": "XFER"}},
        })))
        .unwrap();
        let v: Value = serde_json::from_str(&p.new.payload).unwrap();
        assert_eq!(v, json!({"run": "42", "call_disposition": "XFER"}));
    }

    #[test]
    fn method_is_case_insensitive_and_stored_upper_case() {
        let p = run(&body(json!({"http_method": "patch"}))).unwrap();
        assert_eq!(p.new.http_method, "PATCH");
    }

    #[test]
    fn secret_headers_are_dropped_and_named() {
        let p = run(&body(json!({"custom_headers": [
            {"key": "Authorization", "value": "Bearer x"},
            {"key": "X-Idempotency-Key", "value": "k1"},
            {"key": "", "value": "skipped"},
        ]})))
        .unwrap();
        assert_eq!(p.dropped_headers, vec!["Authorization"]);
        assert_eq!(
            p.new.custom_headers,
            vec![Header {
                key: "X-Idempotency-Key".into(),
                value: "k1".into()
            }]
        );
    }

    #[test]
    fn invalid_input_names_the_field() {
        for (extra, field) in [
            (json!({"endpoint_url": "/relative"}), "endpoint_url"),
            (json!({"endpoint_url": "ftp://h/x"}), "endpoint_url"),
            (json!({"endpoint_url": "https://"}), "endpoint_url"),
            (json!({"endpoint_url": "https:///path"}), "endpoint_url"),
            (json!({"endpoint_url": "https://h:99999/"}), "endpoint_url"),
            (json!({"endpoint_url": "https://h/a b"}), "endpoint_url"),
            (json!({"endpoint_url": "https://h/\n"}), "endpoint_url"),
            (json!({"endpoint_url": "https://[::1/"}), "endpoint_url"),
            (json!({"endpoint_url": ""}), "endpoint_url"),
            (json!({"http_method": "TRACE"}), "http_method"),
            (json!({"max_attempts": 0}), "max_attempts"),
            (json!({"max_attempts": 101}), "max_attempts"),
            (json!({"webhook_node_id": ""}), "webhook_node_id"),
            (
                json!({"webhook_node_id": "n".repeat(256)}),
                "webhook_node_id",
            ),
            (json!({"webhook_name": "n".repeat(256)}), "webhook_name"),
            (json!({"payload": {}, "payload_template": {}}), "payload"),
            (
                json!({"payload": {}, "render_context": {}}),
                "render_context",
            ),
            (json!({"render_context": [1]}), "render_context"),
            (json!({"credential_uuid": ""}), "credential_uuid"),
            (
                json!({"custom_headers": [{"key": "Bad Name", "value": "v"}]}),
                "custom_headers[0].key",
            ),
            (
                json!({"custom_headers": [{"key": "X-A", "value": "v\r\nX-B: 1"}]}),
                "custom_headers[0].value",
            ),
            (json!({"max_attemps": 3}), "max_attemps"),
            (json!({"endpoint_url": null}), "endpoint_url"),
            (json!({"organization_id": "7"}), "invalid type"),
        ] {
            let e = run(&body(extra.clone())).unwrap_err();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn valid_urls_pass() {
        for url in [
            "http://h",
            "HTTPS://example.com:8443/a?b=c#d",
            "http://user:pw@h:80/",
            "http://[::1]:8080/x",
            "http://[::1]/x",
            "http://127.0.0.1:1/",
        ] {
            assert_eq!(validate_endpoint_url(url), Ok(()), "{url}");
        }
    }
}
