//! The delivery engine: one claimer, N senders, one recorder.
//!
//! ```text
//! claimer --(claims, bounded)--> senders --(outcomes)--> recorder
//!    ^                                                      |
//!    +------------- wake: enqueue, freed capacity ----------+
//! ```
//!
//! The claimer takes due rows in batches sized to free capacity; each sender makes one attempt
//! at a time; the recorder writes outcomes in batches, one transaction each. No transaction is
//! ever open across an HTTP call: the lease on the row is what holds it.
//!
//! Senders are started by the claimer as claims need them, up to the configured number, and a
//! sender's thread ends after [`SENDER_IDLE_EXIT`] without a claim: an idle service holds no
//! sender threads (each kept ~100 KiB of stack and of the allocator's per-thread cache).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender as ChannelSender};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::config::{EngineConfig, LEASE_MARGIN};
use crate::delivery::{
    Attempt, Claim, MAX_ERROR_CHARS, Outcome, Transition, method_has_body, truncate_chars,
};
use crate::headers::{request_headers, url_origin};
use crate::metrics::{AttemptResult, Metrics};
use crate::policy::{Decision, Verdict, classify_status, decide, retry_delay};
use crate::send::{Request, Response, Sender};
use crate::store::Store;

/// Resolves a delivery's credential into the header it adds, per attempt (so a rotation or a
/// revocation takes effect on the next attempt).
pub trait CredentialSource: Send + Sync {
    /// The header to add, or why there is none (missing, revoked, unreadable): the attempt is
    /// then not sent, since sending without auth would only earn a 401.
    ///
    /// # Errors
    /// A message for the attempt history.
    fn auth_header(
        &self,
        credential_uuid: &str,
        organization_id: i64,
    ) -> Result<(String, String), String>;
}

/// Most outcomes written in one transaction.
const RECORD_BATCH: usize = 512;
/// How long the recorder waits for more outcomes after the first, so they share a
/// transaction. Measured on a 100k drain: without it batches averaged 3 outcomes (31k
/// transactions, each rewriting whole pages) and the drain was ~8 % slower; with it they
/// average ~120. It delays only the bookkeeping of a send that has already happened.
const RECORD_LINGER: Duration = Duration::from_millis(2);
/// How often rows whose final lease ran out are dead-lettered.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// How long the claimer waits after a store error before trying again.
const STORE_ERROR_PAUSE: Duration = Duration::from_millis(500);
/// The stored error keeps this much of a non-2xx body (the origin's 200).
const ERROR_BODY_CHARS: usize = 200;
/// A claim is sent only if its lease outlasts a full request by this much, so its outcome is
/// written before anyone else may take the row.
const SEND_LEASE_RESERVE: Duration = Duration::from_millis(LEASE_MARGIN.as_millis() as u64 / 2);
/// Memory is given back once the engine has been idle this long: by then the API connections
/// of the same burst have ended and freed theirs (measured after a benchmark load: released
/// at once, the idle service kept 19.6 MiB RSS; 5 s later, 12 MiB). Not at once: a release
/// closes the HTTP client's kept-alive connections, and at 1,000 deliveries/s the engine
/// goes idle between deliveries (it released ~280 times in one benchmark `serve` run, which
/// opened ~1,000 connections instead of ~60).
const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(5);
/// A sender's thread ends after waiting this long for a claim. Its exit is what gives back the
/// stack its requests used and the blocks glibc's per-thread cache (tcache) holds, which no
/// call can flush: with 16 senders those kept an idle service's anonymous memory 1.2-1.4 MiB
/// higher (measured with `GLIBC_TUNABLES=glibc.malloc.tcache_count=0`). Shorter than
/// [`RELEASE_AFTER_IDLE`], so the memory the exited senders freed is among what is given back.
const SENDER_IDLE_EXIT: Duration = Duration::from_secs(2);
/// Claimed-but-unsent rows per sender are bounded by the time they would wait (see
/// `Shared::capacity`), within these bounds.
const MIN_QUEUE_PER_SENDER: usize = 2;
const MAX_QUEUE_PER_SENDER: usize = 64;
/// Rows claimed and not yet recorded, as a multiple of the queue bound. Rows already sent wait
/// only for the recorder, so they do not hold back the next claim (measured: when they did,
/// the senders found the queue empty for 17 % of a drain); but a recorder that cannot write
/// must not let claims run on without limit.
const IN_FLIGHT_PER_QUEUED: usize = 4;

struct Shared {
    store: Arc<dyn Store>,
    sender: Arc<dyn Sender>,
    credentials: Arc<dyn CredentialSource>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    wake_flag: Mutex<bool>,
    wake: Condvar,
    /// Set by shutdown: stop claiming, hand queued claims back unsent.
    stopping: AtomicBool,
    /// Rows claimed whose outcome is not yet written.
    in_flight: AtomicUsize,
    /// Rows claimed that no sender has taken yet: the queue that `capacity` bounds.
    unsent: AtomicUsize,
    /// Moving average of one send, in microseconds, to size the queue.
    avg_send_micros: AtomicU64,
    /// Sender threads running (see [`SenderPool`]).
    live_senders: AtomicUsize,
    /// Their handles, for shutdown to wait on; those of ended threads are dropped as new
    /// ones start.
    sender_threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn wake(&self) {
        let mut flag = self
            .wake_flag
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *flag = true;
        self.wake.notify_all();
    }

    /// Sleeps up to `timeout`, or until woken; a wake that came before the sleep counts.
    /// Returns whether it was woken (or is stopping) rather than timed out.
    fn sleep(&self, timeout: Duration) -> bool {
        let mut flag = self
            .wake_flag
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*flag && !self.stopping.load(Ordering::Acquire) {
            flag = self
                .wake
                .wait_timeout(flag, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let woken = *flag || self.stopping.load(Ordering::Acquire);
        *flag = false;
        woken
    }

    /// How many claimed rows may wait for a sender: enough for batching when sends are fast,
    /// few enough that a queued row is sent well within its lease when sends are slow.
    fn capacity(&self) -> usize {
        let senders = self.config.senders;
        let avg = self.avg_send_micros.load(Ordering::Relaxed).max(1);
        // A claim may wait at most what its lease leaves after one full request (see
        // `lease_allows_send`), and no more than a quarter of the lease.
        let spare = self
            .config
            .lease
            .saturating_sub(self.config.http.timeout + SEND_LEASE_RESERVE);
        let budget = (spare.min(self.config.lease / 4)).as_micros() as u64;
        let per_sender = (budget / avg) as usize;
        senders * per_sender.clamp(MIN_QUEUE_PER_SENDER, MAX_QUEUE_PER_SENDER)
    }

    /// The smallest claim worth a transaction while deliveries are under way, so claims stay
    /// batched under load (a lone enqueue into an empty pipeline goes out at once).
    fn worthwhile_claim(&self, capacity: usize) -> usize {
        (capacity / 4).clamp(1, self.config.claim_batch as usize)
    }

    /// A sender took a claim off the queue: wake the claimer when the queue has just fallen
    /// to where a worthwhile claim fits (not on every take; the recorder's wake after each
    /// batch is the backstop).
    fn claim_taken(&self) {
        let left = self.unsent.fetch_sub(1, Ordering::AcqRel) - 1;
        let capacity = self.capacity();
        if left == 0 || left == capacity.saturating_sub(self.worthwhile_claim(capacity)) {
            self.wake();
        }
    }

    fn lock_sender_threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.sender_threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn note_send_time(&self, took: Duration) {
        let sample = took.as_micros() as u64;
        let old = self.avg_send_micros.load(Ordering::Relaxed);
        // EWMA with weight 1/16: smooth, but follows a receiver that slows down within seconds.
        let new = if old == 0 {
            sample
        } else {
            old - old / 16 + sample / 16
        };
        self.avg_send_micros.store(new, Ordering::Relaxed);
    }
}

/// Wakes the claimer at once: call it after an enqueue commits.
#[derive(Clone)]
pub struct Waker(Arc<Shared>);

impl Waker {
    pub fn wake(&self) {
        self.0.wake();
    }
}

/// What a graceful stop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Claimed rows handed back unsent (their attempt not spent).
    pub released: u64,
    /// Whether every thread finished within the drain deadline. If not, the rows still in
    /// flight come back when their leases end.
    pub clean: bool,
}

/// A running engine. Dropping it without [`Engine::shutdown`] leaves its threads running.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Validates the configuration and starts the claimer, the senders and the recorder.
    ///
    /// # Errors
    /// [`crate::Error::Config`] when the configuration cannot work (see
    /// [`EngineConfig::validate`]), or a thread cannot be started.
    pub fn start(
        store: Arc<dyn Store>,
        sender: Arc<dyn Sender>,
        credentials: Arc<dyn CredentialSource>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> crate::Result<Engine> {
        config.validate()?;
        let senders = config.senders;
        let shared = Arc::new(Shared {
            store,
            sender,
            credentials,
            clock,
            config,
            metrics,
            wake_flag: Mutex::new(true),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            unsent: AtomicUsize::new(0),
            avg_send_micros: AtomicU64::new(0),
            live_senders: AtomicUsize::new(0),
            sender_threads: Mutex::new(Vec::new()),
        });
        // Boxed claims: a bounded channel allocates and touches all its slots when it is made,
        // and with the default 16 senders its 1,024 slots, each the size of a whole claim,
        // held 336 KiB for the life of the process (measured at start: 1.5 -> 1.1 MiB of
        // anonymous memory).
        let (claims_tx, claims_rx) =
            crossbeam_channel::bounded::<Box<Claim>>(senders * MAX_QUEUE_PER_SENDER);
        let (outcomes_tx, outcomes_rx) = crossbeam_channel::unbounded::<Outcome>();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .map_err(|e| crate::Error::Config(format!("cannot start a thread: {e}")))
        };
        let pool = SenderPool {
            claims: claims_rx,
            outcomes: outcomes_tx,
        };
        let mut threads = Vec::with_capacity(2);
        {
            let shared = Arc::clone(&shared);
            threads.push(spawn(
                "outbox-claimer",
                Box::new(move || claimer(&shared, claims_tx, pool)),
            )?);
        }
        {
            let shared = Arc::clone(&shared);
            threads.push(spawn(
                "outbox-recorder",
                Box::new(move || recorder(&shared, &outcomes_rx)),
            )?);
        }
        Ok(Engine { shared, threads })
    }

    /// A handle that wakes the claimer (after an enqueue in this process).
    pub fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.shared))
    }

    /// Graceful stop: no more claims; sends under way finish (up to the configured drain
    /// timeout); claimed rows not yet sent are handed back as due now without spending their
    /// attempt; outcomes are written; then the threads end.
    pub fn shutdown(self) -> DrainReport {
        let released_before = self.shared.metrics.released.load(Ordering::Relaxed);
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake();
        let deadline = Instant::now() + self.shared.config.drain_timeout;
        let wait = |thread: JoinHandle<()>| {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let finished = thread.is_finished();
            if finished {
                let _ = thread.join();
            }
            finished
        };
        let mut threads = self.threads.into_iter();
        // The claimer first: once it has ended, no sender is started any more.
        let mut clean = threads.next().is_none_or(wait);
        let senders = std::mem::take(&mut *self.shared.lock_sender_threads());
        for thread in senders.into_iter().chain(threads) {
            clean &= wait(thread);
        }
        let released = self.shared.metrics.released.load(Ordering::Relaxed) - released_before;
        if !clean {
            log::warn!(
                "drain deadline reached with {} deliveries in flight: they are sent again after their lease",
                self.shared.in_flight.load(Ordering::Relaxed)
            );
        }
        DrainReport { released, clean }
    }
}

fn claimer(shared: &Arc<Shared>, claims: ChannelSender<Box<Claim>>, pool: SenderPool) {
    let config = &shared.config;
    let mut last_expire: Option<Instant> = None;
    // Set while deliveries flow; the first idle look after that sets when freed memory is
    // given back, RELEASE_AFTER_IDLE later (see there), unless deliveries flow again.
    let mut was_busy = false;
    let mut release_at: Option<Instant> = None;
    while !shared.stopping.load(Ordering::Acquire) {
        if last_expire.is_none_or(|t| t.elapsed() >= EXPIRE_EVERY) {
            last_expire = Some(Instant::now());
            match shared.store.expire_final_leases(shared.clock.now()) {
                Ok(expired) => {
                    for e in expired {
                        log::warn!(
                            "delivery {} dead-lettered: lease expired during its final attempt {}; outcome unknown",
                            e.delivery_uuid,
                            e.attempt_count
                        );
                    }
                }
                Err(e) => log::error!("expiring final leases failed: {e}"),
            }
        }
        let capacity = shared.capacity();
        let in_flight = shared.in_flight.load(Ordering::Acquire);
        let unsent = shared.unsent.load(Ordering::Acquire);
        let free = capacity
            .saturating_sub(unsent)
            .min((capacity * IN_FLIGHT_PER_QUEUED).saturating_sub(in_flight));
        // Wait for a worthwhile batch unless the pipeline is empty, so claims stay batched
        // under load and a lone enqueue still goes out at once.
        let worthwhile = shared.worthwhile_claim(capacity);
        if free == 0 || (in_flight > 0 && free < worthwhile) {
            shared.sleep(config.poll_interval);
            continue;
        }
        let limit = free.min(config.claim_batch as usize);
        let now = shared.clock.now();
        let batch = match shared.store.claim_due(now, limit as u32, config.lease) {
            Ok(batch) => batch,
            Err(e) => {
                log::error!("claiming due deliveries failed: {e}");
                shared.sleep(STORE_ERROR_PAUSE);
                continue;
            }
        };
        let got = batch.len();
        if got > 0 {
            was_busy = true;
            release_at = None;
        } else if was_busy && in_flight == 0 {
            was_busy = false;
            release_at = Some(Instant::now() + RELEASE_AFTER_IDLE);
        } else if release_at.is_some_and(|t| Instant::now() >= t) {
            release_at = None;
            release_memory(shared);
        }
        shared.in_flight.fetch_add(got, Ordering::AcqRel);
        shared.unsent.fetch_add(got, Ordering::AcqRel);
        // Queueing does not wait for a sender: `free` kept the queue within `capacity`, which
        // is at most the channel's bound. Senders are started after, as `start_senders` needs.
        for claim in batch {
            if claims.send(Box::new(claim)).is_err() {
                return;
            }
        }
        if got > 0 {
            pool.start_senders(shared, shared.in_flight.load(Ordering::Acquire));
        }
        if got == limit {
            continue; // more may be due right now
        }
        // Nothing else is due: sleep until the next row is, capped by the poll interval (the
        // backstop for rows other processes insert), or until woken. While nothing is due,
        // each poll is this one read, not also an expiry and a claim (two write transactions,
        // which an idle service ran every second).
        let mut first_look = true;
        loop {
            let wait = match shared.store.next_due_at() {
                Ok(Some(next)) => until(next, shared.clock.now()).min(config.poll_interval),
                Ok(None) => config.poll_interval,
                Err(e) => {
                    log::error!("reading the next due time failed: {e}");
                    shared.sleep(STORE_ERROR_PAUSE);
                    break;
                }
            };
            if wait.is_zero() {
                // Due right after a claim that did not take it: its budget is spent, so it
                // waits for expiry, not a busy loop. Due later on: claim it.
                if first_look {
                    shared.sleep(EXPIRE_EVERY.min(config.poll_interval));
                }
                break;
            }
            if shared.sleep(wait) {
                break;
            }
            first_look = false;
            if release_at.is_some_and(|t| Instant::now() >= t) {
                release_at = None;
                release_memory(shared);
            }
        }
    }
}

/// Closes idle HTTP connections, shrinks SQLite's caches and gives the allocator's free pages
/// back to the OS.
fn release_memory(shared: &Shared) {
    shared.sender.release_idle();
    shared.store.release_memory();
    crate::memory::release_free_memory();
}

fn until(t: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(t - now).unwrap_or(Duration::ZERO)
}

/// What sender threads need, held by the claimer: when it ends, so do the channels' ends it
/// holds, and the senders and then the recorder see them close.
struct SenderPool {
    claims: Receiver<Box<Claim>>,
    outcomes: ChannelSender<Outcome>,
}

impl SenderPool {
    /// Starts senders until `wanted` (at most the configured number) run. Call it after
    /// queueing claims: with the check a sender makes before it ends
    /// ([`LiveSender::end_if_idle`]), a sender is left to take every claim queued.
    fn start_senders(&self, shared: &Arc<Shared>, wanted: usize) {
        let wanted = wanted.min(shared.config.senders);
        // SeqCst, as in `LiveSender::end_if_idle`: of a claim queued just as the last sender
        // ends, either this load sees that sender gone or that sender sees the claim.
        let live = shared.live_senders.load(Ordering::SeqCst);
        if live >= wanted {
            return;
        }
        let mut threads = shared.lock_sender_threads();
        threads.retain(|t| !t.is_finished());
        for _ in live..wanted {
            shared.live_senders.fetch_add(1, Ordering::SeqCst);
            let (thread_shared, claims, outcomes) = (
                Arc::clone(shared),
                self.claims.clone(),
                self.outcomes.clone(),
            );
            let started = std::thread::Builder::new()
                .name("outbox-sender".to_owned())
                .spawn(move || sender_loop(&thread_shared, &claims, &outcomes));
            match started {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // The claims wait for the next start, at the next claim; their leases
                    // bound how long.
                    shared.live_senders.fetch_sub(1, Ordering::SeqCst);
                    log::error!("cannot start a sender thread: {e}");
                    return;
                }
            }
        }
    }
}

fn sender_loop(shared: &Shared, claims: &Receiver<Box<Claim>>, outcomes: &ChannelSender<Outcome>) {
    let mut live = LiveSender(&shared.live_senders);
    loop {
        let claim = match claims.recv_timeout(SENDER_IDLE_EXIT) {
            Ok(claim) => claim,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => match live.end_if_idle(claims) {
                Some(still) => {
                    live = still;
                    continue;
                }
                None => return,
            },
        };
        shared.claim_taken();
        let outcome =
            if shared.stopping.load(Ordering::Acquire) || !lease_allows_send(shared, &claim) {
                release(shared, &claim)
            } else {
                attempt(shared, &claim)
            };
        if outcomes.send(outcome).is_err() {
            return;
        }
    }
}

/// A sender thread's place in `Shared::live_senders`, counted in by the claimer before it
/// starts the thread and counted out when the thread ends, however it ends (a panic included,
/// so the claimer starts another when claims need one).
struct LiveSender<'a>(&'a AtomicUsize);

impl LiveSender<'_> {
    /// Ends an idle sender's place unless a claim is queued. It counts itself out first and
    /// then looks at the queue, while the claimer queues a claim first and then counts the
    /// senders (both SeqCst): so a claim queued meanwhile is seen either here (the sender
    /// stays) or by the claimer, which then starts another sender.
    fn end_if_idle<T>(self, claims: &Receiver<T>) -> Option<Self> {
        self.0.fetch_sub(1, Ordering::SeqCst);
        if claims.is_empty() {
            std::mem::forget(self); // counted out already
            return None;
        }
        self.0.fetch_add(1, Ordering::SeqCst);
        Some(self)
    }
}

impl Drop for LiveSender<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A claim that waited in the queue too long to finish within its lease is handed back rather
/// than sent: another worker may take it when the lease ends, and two sends would race.
fn lease_allows_send(shared: &Shared, claim: &Claim) -> bool {
    let Some(lease_end) = claim.delivery.scheduled_for else {
        return false;
    };
    until(lease_end, shared.clock.now()) >= shared.config.http.timeout + SEND_LEASE_RESERVE
}

fn release(shared: &Shared, claim: &Claim) -> Outcome {
    shared.metrics.released.fetch_add(1, Ordering::Relaxed);
    Outcome {
        delivery_id: claim.delivery.id,
        lease_token: claim.lease_token.clone(),
        transition: Transition::Release {
            at: shared.clock.now(),
        },
        attempt: None,
    }
}

/// Makes one attempt and decides what it means for the delivery.
fn attempt(shared: &Shared, claim: &Claim) -> Outcome {
    let d = &claim.delivery;
    let n = claim.attempt();
    let started_at = shared.clock.now();
    let timer = Instant::now();
    let auth = match &d.credential_uuid {
        None => Ok(None),
        Some(uuid) => shared
            .credentials
            .auth_header(uuid, d.organization_id)
            .map(Some),
    };
    let response = match auth {
        Err(error) => Response::Failed { error },
        Ok(auth) => {
            let has_body = method_has_body(&d.http_method);
            let headers = request_headers(
                has_body,
                auth.as_ref(),
                &d.custom_headers,
                &d.delivery_uuid,
                d.workflow_run_id,
                n,
            );
            shared.sender.send(&Request {
                method: &d.http_method,
                url: &d.endpoint_url,
                headers: &headers,
                body: has_body.then_some(d.payload.as_bytes()),
            })
        }
    };
    let took = timer.elapsed();
    shared.note_send_time(took);

    let (verdict, status_code, retry_after, error, excerpt) = match response {
        Response::Received {
            status,
            retry_after,
            excerpt,
        } => {
            let verdict = classify_status(status);
            let error = (verdict != Verdict::Succeeded).then(|| {
                format!(
                    "HTTP {status}: {}",
                    truncate_chars(&excerpt, ERROR_BODY_CHARS)
                )
            });
            (verdict, Some(status), retry_after, error, Some(excerpt))
        }
        Response::Failed { error } => (Verdict::Transient, None, None, Some(error), None),
    };
    let decision = decide(verdict, n, d.max_attempts, || {
        retry_delay(
            &shared.config.retry,
            n,
            status_code,
            retry_after.as_deref(),
            started_at,
            jitter(),
        )
    });
    let (transition, result, note) = match decision {
        Decision::Succeeded => (
            Transition::Succeeded {
                status_code: status_code.unwrap_or(200),
            },
            AttemptResult::Succeeded,
            String::new(),
        ),
        Decision::Retry { delay } => (
            Transition::Retry {
                at: shared.clock.now() + delay,
                status_code,
                error: error.clone().unwrap_or_default(),
            },
            AttemptResult::Retry,
            format!("; retrying in {:.1}s", delay.as_secs_f64()),
        ),
        Decision::DeadLetter => (
            Transition::DeadLetter {
                status_code,
                error: error.clone().unwrap_or_default(),
            },
            AttemptResult::DeadLetter,
            if verdict == Verdict::Transient {
                format!("; dead-lettered after {n} attempts")
            } else {
                "; dead-lettered (permanent)".to_string()
            },
        ),
    };
    shared.metrics.attempt(result, took);
    // One line per attempt: the origin only (no path, query or credentials), never header values.
    let what = match (status_code, &error) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(e)) => truncate_chars(e, 200).to_string(),
        (None, None) => String::new(),
    };
    log::info!(
        "delivery {} attempt {n}/{}: {} {} -> {what} in {} ms{note}",
        d.delivery_uuid,
        d.max_attempts,
        d.http_method,
        url_origin(&d.endpoint_url),
        took.as_millis()
    );
    Outcome {
        delivery_id: d.id,
        lease_token: claim.lease_token.clone(),
        transition,
        attempt: Some(Attempt {
            attempt_number: n,
            started_at,
            duration_ms: took.as_millis() as u64,
            status_code,
            error: error.map(|e| truncate_chars(&e, MAX_ERROR_CHARS).to_string()),
            response_excerpt: excerpt,
        }),
    }
}

fn recorder(shared: &Shared, outcomes: &Receiver<Outcome>) {
    while let Ok(first) = outcomes.recv() {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        batch.push(first);
        batch.extend(outcomes.try_iter().take(RECORD_BATCH - 1));
        if batch.len() < RECORD_BATCH {
            // Sleep out the linger rather than wait on the channel: a waiting receiver is
            // woken by every send, one context switch per outcome (measured: ~1 in 8 of the
            // drain's CPU samples were the recorder being woken or yielding).
            std::thread::sleep(RECORD_LINGER);
            batch.extend(outcomes.try_iter().take(RECORD_BATCH - batch.len()));
        }
        write_outcomes(shared, &batch);
        shared.in_flight.fetch_sub(batch.len(), Ordering::AcqRel);
        shared.wake();
    }
}

/// Writes a batch, retrying a failed write with backoff for up to one lease. Past that the
/// rows are due again anyway: each is re-sent with the same delivery id (never dead-lettered
/// for a write that failed), and this late write would be fenced out.
fn write_outcomes(shared: &Shared, batch: &[Outcome]) {
    let give_up = Instant::now() + shared.config.lease;
    let mut pause = Duration::from_millis(50);
    loop {
        match shared.store.record(batch, shared.clock.now()) {
            Ok(applied) => {
                let stale = applied.iter().filter(|a| !**a).count();
                if stale > 0 {
                    shared
                        .metrics
                        .stale_outcomes
                        .fetch_add(stale as u64, Ordering::Relaxed);
                    log::warn!(
                        "{stale} outcome(s) refused by the lease fence: another worker holds those rows"
                    );
                }
                return;
            }
            Err(e) => {
                shared.metrics.record_errors.fetch_add(1, Ordering::Relaxed);
                let stopping_late =
                    shared.stopping.load(Ordering::Acquire) && pause >= Duration::from_secs(1);
                if Instant::now() + pause > give_up || stopping_late {
                    log::error!(
                        "recording {} outcome(s) failed, giving up: {e}; those deliveries are sent again after their lease",
                        batch.len()
                    );
                    return;
                }
                log::warn!(
                    "recording {} outcome(s) failed, retrying in {pause:?}: {e}",
                    batch.len()
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// A uniform number in [0, 1) for backoff jitter. Not for secrets: a per-thread xorshift
/// seeded from the OS.
fn jitter() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let values: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let distinct: std::collections::HashSet<u64> = values.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 990);
    }
}
