//! A small synchronous HTTP/1.1 server for outbox's API.
//!
//! Why not a crate: tiny_http 0.12 was measured to stall with more than a few
//! concurrent keep-alive connections, and outbox deliberately has no async
//! runtime. This server is std::net + httparse, one thread per connection,
//! which is plenty for an operator/appliance API.
//!
//! What it does:
//! - HTTP/1.1 keep-alive by default; `Connection: close` is honoured; HTTP/1.0
//!   closes unless the client asked for `Connection: keep-alive`.
//! - Pipelining: bytes left over after one request are the start of the next.
//! - Request bodies: `Content-Length`, and `Transfer-Encoding: chunked` (decoded,
//!   trailers discarded, `max_body_bytes` enforced while decoding). Any other
//!   transfer coding is refused with 501; `Content-Length` together with
//!   `Transfer-Encoding` is refused with 400 (request smuggling guard).
//! - `Expect: 100-continue` gets an interim `100 Continue` before the body is
//!   read, unless the declared body is already too large (then 413 at once).
//!   Other expectations get 417.
//! - Errors answer and close: malformed request 400, body too large 413 (decided
//!   from `Content-Length` before reading the body), headers too large 431,
//!   idle-in-the-middle-of-a-request 408.
//! - A panicking handler yields 500; the connection and the server live on.
//! - Every response carries `Content-Length` (except 1xx/204/304) and
//!   `Connection: close` when the server closes afterwards.
//!
//! Paths are not percent-decoded (routing is the caller's business); the query
//! is available raw and through [`Request::query_pairs`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long [`ServerHandle::shutdown`] waits for in-flight requests.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Most headers accepted in one request (more gives 431).
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// After an error response we drain what the client is still sending for at most
/// this long / this many bytes, so closing does not RST away our response.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// An HTTP request, fully read (body included) before the handler runs.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method as sent, e.g. `GET`.
    pub method: String,
    /// Request target up to (not including) `?`; not percent-decoded.
    pub path: String,
    /// Raw query string without the leading `?` (empty when absent).
    pub query: String,
    /// Headers in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked bodies are de-chunked).
    pub body: Vec<u8>,
    /// Address of the client.
    pub peer: SocketAddr,
}

impl Request {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Query parameters in order, percent-decoded (`+` means space). Invalid
    /// UTF-8 is replaced with U+FFFD.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (percent_decode(k), percent_decode(v)),
                None => (percent_decode(p), String::new()),
            })
            .collect()
    }
}

/// An HTTP response. `Content-Length`, `Transfer-Encoding` and `Connection`
/// headers set here are ignored/replaced by the server (a handler may set
/// `Connection: close` to make the server close after this response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Headers to send, in order (see the type docs for the ones the server owns).
    pub headers: Vec<(String, String)>,
    /// Body; its length becomes `Content-Length`. Not sent for HEAD, 1xx, 204, 304.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a `Content-Type` header and a body.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".to_string(), content_type.to_string())],
            body: body.into(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, s: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", s.into().into_bytes())
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Server limits and timeouts.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted request body, after de-chunking. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Connections served at once; beyond this new connections get 503 and are
    /// closed. Default 256.
    pub max_connections: usize,
    /// Socket read/write timeout; in particular how long an idle keep-alive
    /// connection is kept open. Default 30 s.
    pub read_timeout: Duration,
    /// Largest accepted request line + headers. Default 64 KiB.
    pub max_header_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 1024 * 1024,
            max_connections: 256,
            read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    config: ServerConfig,
}

impl Server {
    /// Binds `addr` (e.g. `127.0.0.1:0` for an ephemeral port).
    ///
    /// # Errors
    /// Whatever [`TcpListener::bind`] returns (address in use, bad address...).
    pub fn bind(addr: &str, config: ServerConfig) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        Ok(Server {
            listener,
            addr,
            config,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the accept thread; each connection gets its own thread calling
    /// `handler` for each request.
    ///
    /// # Errors
    /// The OS error when the accept thread cannot be started.
    pub fn serve<H>(self, handler: H) -> io::Result<ServerHandle>
    where
        H: Fn(Request) -> Response + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            config: self.config,
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            conns_changed: Condvar::new(),
            next_id: AtomicU64::new(0),
            handler: Box::new(handler),
        });
        let accept_shared = Arc::clone(&shared);
        let listener = self.listener;
        let accept = thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(ServerHandle {
            shared,
            addr: self.addr,
            accept: Some(accept),
        })
    }
}

/// A running server. Dropping it shuts it down like [`ServerHandle::shutdown`].
pub struct ServerHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes idle keep-alive connections at once, waits up to
    /// [`DEFAULT_SHUTDOWN_GRACE`] for in-flight requests to be answered, then
    /// joins the threads.
    pub fn shutdown(self) {
        self.shutdown_timeout(DEFAULT_SHUTDOWN_GRACE);
    }

    /// Like [`ServerHandle::shutdown`] with a chosen grace period. Connections
    /// still busy after `grace` are closed forcibly; a handler that still does
    /// not return is left running (its thread is detached, with a warning).
    pub fn shutdown_timeout(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        let shared = &self.shared;
        shared.stop.store(true, Ordering::SeqCst);
        // Unblock accept() with a connection to ourselves.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => [127, 0, 0, 1].into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let mut handles = accept.join().unwrap_or_default();

        // Close idle connections; busy ones see `stop` and close after answering.
        {
            let conns = shared.lock_conns();
            for c in conns.values() {
                if c.idle {
                    let _ = c.stream.shutdown(Shutdown::Read);
                }
            }
        }
        let deadline = Instant::now() + grace;
        let mut conns = shared.lock_conns();
        while !conns.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            conns = shared
                .conns_changed
                .wait_timeout(conns, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if !conns.is_empty() {
            log::warn!(
                "http server: {} connection(s) still busy after {:?}; closing them",
                conns.len(),
                grace
            );
            for c in conns.values() {
                let _ = c.stream.shutdown(Shutdown::Both);
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while !conns.is_empty() && Instant::now() < deadline {
                conns = shared
                    .conns_changed
                    .wait_timeout(conns, Duration::from_millis(50))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        let all_done = conns.is_empty();
        drop(conns);
        for h in handles.drain(..) {
            if all_done || h.is_finished() {
                let _ = h.join();
            } else {
                log::warn!("http server: a handler did not return; detaching its thread");
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop(DEFAULT_SHUTDOWN_GRACE);
    }
}

type Handler = dyn Fn(Request) -> Response + Send + Sync;

struct Shared {
    config: ServerConfig,
    stop: AtomicBool,
    /// Live connections, for shutdown: a clone of the stream and whether the
    /// connection is idle (waiting for the first byte of a request).
    conns: Mutex<HashMap<u64, ConnEntry>>,
    conns_changed: Condvar,
    next_id: AtomicU64,
    handler: Box<Handler>,
}

struct ConnEntry {
    stream: TcpStream,
    idle: bool,
}

impl Shared {
    fn lock_conns(&self) -> MutexGuard<'_, HashMap<u64, ConnEntry>> {
        // Nothing panics while holding this lock, but don't cascade if it did.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks connection `id` idle/busy. Returns false when the server is
    /// stopping and the connection should close instead of waiting.
    fn set_idle(&self, id: u64, idle: bool) -> bool {
        let mut conns = self.lock_conns();
        if idle && self.stop.load(Ordering::SeqCst) {
            return false;
        }
        if let Some(c) = conns.get_mut(&id) {
            c.idle = idle;
        }
        true
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("http server: accept failed: {e}");
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        handles.retain(|h| !h.is_finished());
        let _ = stream.set_nodelay(true);
        let cfg = &shared.config;
        let _ = stream.set_read_timeout(Some(cfg.read_timeout));
        let _ = stream.set_write_timeout(Some(cfg.read_timeout));

        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = shared.lock_conns();
            if conns.len() >= cfg.max_connections {
                drop(conns);
                log::warn!("http server: connection limit reached; refusing {peer}");
                reject_busy(stream);
                continue;
            }
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            conns.insert(
                id,
                ConnEntry {
                    stream: clone,
                    idle: true,
                },
            );
        }
        let conn_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .spawn(move || {
                serve_connection(stream, peer, id, &conn_shared);
                conn_shared.lock_conns().remove(&id);
                conn_shared.conns_changed.notify_all();
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                log::error!("http server: cannot spawn connection thread: {e}");
                shared.lock_conns().remove(&id);
            }
        }
    }
    handles
}

/// Answers 503 on the accept thread, briefly and without reading the request.
fn reject_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let resp = Response::text(503, "too many connections\n");
    let _ = stream.write_all(&encode_response(&resp, true, false));
    linger_close(stream, Duration::from_millis(50));
}

/// Half-closes, then drains briefly so unread request bytes don't make the
/// kernel send RST (which can destroy the response before the client reads it).
fn linger_close(mut stream: TcpStream, max: Duration) {
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + max;
    let mut drained = 0usize;
    let mut buf = [0u8; 8192];
    while drained < LINGER_BYTES {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let _ = stream.set_read_timeout(Some(deadline - now));
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Why reading a request stopped.
enum ReadError {
    /// Clean end: EOF or idle timeout between requests, or server stopping.
    Closed,
    /// The socket failed mid-request; nothing sensible to answer.
    Io,
    /// Answer with this status and close.
    Status(u16, &'static str),
}

/// A connection's socket plus its read buffer (`buf[start..]` is unconsumed).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes into the buffer; Ok(0) on EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let r = loop {
            match self.stream.read(&mut self.buf[old..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        self.buf.truncate(old + *r.as_ref().unwrap_or(&0));
        r
    }

    /// `fill` for the middle of a request: EOF and errors become ReadError.
    fn fill_mid(&mut self) -> Result<(), ReadError> {
        match self.fill() {
            Ok(0) => Err(ReadError::Io),
            Ok(_) => Ok(()),
            Err(e) if is_timeout(&e) => Err(ReadError::Status(408, "request timeout")),
            Err(_) => Err(ReadError::Io),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, id: u64, shared: &Shared) {
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        start: 0,
    };
    loop {
        let (req, keep_alive) = match read_request(&mut conn, peer, id, shared) {
            Ok(x) => x,
            Err(ReadError::Closed) | Err(ReadError::Io) => return,
            Err(ReadError::Status(status, msg)) => {
                log::debug!("http server: {peer}: {status} {msg}");
                let resp = Response::text(status, format!("{msg}\n"));
                let _ = conn.stream.write_all(&encode_response(&resp, true, false));
                linger_close(conn.stream, LINGER_TIME);
                return;
            }
        };
        let head = req.method == "HEAD";
        let (method, path) = (req.method.clone(), req.path.clone());
        let resp = match catch_unwind(AssertUnwindSafe(|| (shared.handler)(req))) {
            Ok(r) => r,
            Err(_) => {
                log::error!("http server: handler panicked on {method} {path}");
                Response::text(500, "internal server error\n")
            }
        };
        let wants_close =
            find_header(&resp.headers, "connection").is_some_and(|v| has_token(v, "close"));
        let close = !keep_alive || wants_close || shared.stop.load(Ordering::SeqCst);
        let bytes = encode_response(&resp, close, head);
        if conn.stream.write_all(&bytes).is_err() {
            return;
        }
        if close {
            linger_close(conn.stream, LINGER_TIME);
            return;
        }
    }
}

/// Reads one request; returns it and whether the connection may stay open.
fn read_request(
    conn: &mut Conn,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
) -> Result<(Request, bool), ReadError> {
    let cfg = &shared.config;
    // --- head ---
    let (method, target, version, headers, head_len) = loop {
        if !conn.buffered().is_empty() {
            let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut hdrs);
            match parsed.parse(conn.buffered()) {
                Ok(httparse::Status::Complete(n)) => {
                    if n > cfg.max_header_bytes {
                        return Err(ReadError::Status(431, "request header fields too large"));
                    }
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).trim().to_string(),
                            )
                        })
                        .collect();
                    break (
                        parsed.method.unwrap_or_default().to_string(),
                        parsed.path.unwrap_or_default().to_string(),
                        parsed.version.unwrap_or(1),
                        headers,
                        n,
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if conn.buffered().len() > cfg.max_header_bytes {
                        return Err(ReadError::Status(431, "request header fields too large"));
                    }
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(ReadError::Status(431, "too many request headers"));
                }
                Err(_) => return Err(ReadError::Status(400, "malformed request")),
            }
            conn.fill_mid()?;
        } else {
            // Between requests: idle, so shutdown may close us.
            if !shared.set_idle(id, true) {
                return Err(ReadError::Closed);
            }
            let r = conn.fill();
            shared.set_idle(id, false);
            match r {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(_) => return Err(ReadError::Closed),
            }
        }
    };
    conn.consume(head_len);

    // --- connection semantics ---
    let conn_hdr = find_header(&headers, "connection").unwrap_or("");
    let mut keep_alive = if version == 0 {
        has_token(conn_hdr, "keep-alive")
    } else {
        !has_token(conn_hdr, "close")
    };

    // --- body framing ---
    let te = find_header(&headers, "transfer-encoding");
    let cls: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    enum Framing {
        Length(usize),
        Chunked,
    }
    let framing = if let Some(te) = te {
        if !cls.is_empty() {
            return Err(ReadError::Status(
                400,
                "both content-length and transfer-encoding",
            ));
        }
        if !te.trim().eq_ignore_ascii_case("chunked") {
            return Err(ReadError::Status(501, "unsupported transfer-encoding"));
        }
        if version == 0 {
            return Err(ReadError::Status(400, "chunked body in HTTP/1.0"));
        }
        Framing::Chunked
    } else if cls.is_empty() {
        Framing::Length(0)
    } else {
        let first = cls[0];
        if cls.iter().any(|v| *v != first)
            || first.is_empty()
            || !first.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ReadError::Status(400, "invalid content-length"));
        }
        match first.parse::<u64>() {
            Ok(n) if n > cfg.max_body_bytes as u64 => {
                return Err(ReadError::Status(413, "request body too large"));
            }
            Ok(n) => Framing::Length(n as usize),
            // Only overflow can fail here: certainly too large.
            Err(_) => return Err(ReadError::Status(413, "request body too large")),
        }
    };

    // --- Expect ---
    if let Some(expect) = find_header(&headers, "expect") {
        if !expect.eq_ignore_ascii_case("100-continue") {
            return Err(ReadError::Status(417, "expectation failed"));
        }
        let has_body = !matches!(framing, Framing::Length(0));
        if version == 1 && has_body && conn.buffered().is_empty() {
            conn.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| ReadError::Io)?;
        }
    }

    // --- body ---
    let body = match framing {
        Framing::Length(n) => {
            while conn.buffered().len() < n {
                conn.fill_mid()?;
            }
            let body = conn.buffered()[..n].to_vec();
            conn.consume(n);
            body
        }
        Framing::Chunked => read_chunked(conn, cfg)?,
    };

    if shared.stop.load(Ordering::SeqCst) {
        keep_alive = false;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Ok((
        Request {
            method,
            path,
            query,
            headers,
            body,
            peer,
        },
        keep_alive,
    ))
}

fn read_chunked(conn: &mut Conn, cfg: &ServerConfig) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let size = loop {
            match httparse::parse_chunk_size(conn.buffered()) {
                Ok(httparse::Status::Complete((used, size))) => {
                    conn.consume(used);
                    break size;
                }
                Ok(httparse::Status::Partial) => {
                    if conn.buffered().len() > MAX_CHUNK_LINE {
                        return Err(ReadError::Status(400, "chunk size line too long"));
                    }
                    conn.fill_mid()?;
                }
                Err(_) => return Err(ReadError::Status(400, "invalid chunk size")),
            }
        };
        if size == 0 {
            break;
        }
        if body.len() as u64 + size > cfg.max_body_bytes as u64 {
            return Err(ReadError::Status(413, "request body too large"));
        }
        let size = size as usize;
        while conn.buffered().len() < size + 2 {
            conn.fill_mid()?;
        }
        if &conn.buffered()[size..size + 2] != b"\r\n" {
            return Err(ReadError::Status(400, "chunk not terminated by CRLF"));
        }
        body.extend_from_slice(&conn.buffered()[..size]);
        conn.consume(size + 2);
    }
    // Trailer section: header lines up to an empty line; discarded.
    let mut trailer_bytes = 0usize;
    loop {
        let Some(pos) = conn.buffered().windows(2).position(|w| w == b"\r\n") else {
            if conn.buffered().len() > cfg.max_header_bytes {
                return Err(ReadError::Status(431, "trailers too large"));
            }
            conn.fill_mid()?;
            continue;
        };
        conn.consume(pos + 2);
        trailer_bytes += pos + 2;
        if trailer_bytes > cfg.max_header_bytes {
            return Err(ReadError::Status(431, "trailers too large"));
        }
        if pos == 0 {
            return Ok(body);
        }
    }
}

/// Serialises a response. `close` adds `Connection: close`; `head` omits the body.
fn encode_response(resp: &Response, close: bool, head: bool) -> Vec<u8> {
    let no_body = resp.status < 200 || resp.status == 204 || resp.status == 304;
    let mut out = Vec::with_capacity(128 + resp.body.len());
    out.extend_from_slice(
        format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status)).as_bytes(),
    );
    for (k, v) in &resp.headers {
        if k.eq_ignore_ascii_case("content-length")
            || k.eq_ignore_ascii_case("transfer-encoding")
            || k.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        // Refuse header injection from handler-provided values.
        if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
            log::warn!("http server: dropping invalid response header {k:?}");
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !no_body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", resp.body.len()).as_bytes());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else {
        // Harmless for 1.1 clients, needed for 1.0 clients that asked for it.
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !no_body && !head {
        out.extend_from_slice(&resp.body);
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Echo handler: `METHOD PATH QUERYPAIRS BODYLEN PEERPORT`; `/panic` panics,
    /// `/sleep` takes 300 ms.
    fn start(cfg: ServerConfig) -> ServerHandle {
        let server = Server::bind("127.0.0.1:0", cfg).unwrap();
        server
            .serve(|req: Request| {
                match req.path.as_str() {
                    "/panic" => panic!("handler panic (expected by test)"),
                    "/sleep" => thread::sleep(Duration::from_millis(300)),
                    _ => {}
                }
                let pairs: Vec<String> = req
                    .query_pairs()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let body = format!(
                    "{} {} {} {} {} {}",
                    req.method,
                    req.path,
                    pairs.join(","),
                    req.body.len(),
                    req.peer.port(),
                    String::from_utf8_lossy(&req.body)
                );
                Response::text(200, body).with_header("X-Test", "yes")
            })
            .unwrap()
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build(),
        )
    }

    struct RawResponse {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl RawResponse {
        fn header(&self, name: &str) -> Option<&str> {
            find_header(&self.headers, name)
        }
    }

    /// Reads one response from `s`, keeping extra bytes in `buf`.
    fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<RawResponse> {
        loop {
            let mut hdrs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hdrs);
            if let Ok(httparse::Status::Complete(n)) = r.parse(buf) {
                let status = r.code.unwrap();
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).to_string(),
                        )
                    })
                    .collect();
                let len: usize = find_header(&headers, "content-length")
                    .map(|v| v.parse().unwrap())
                    .unwrap_or(0);
                buf.drain(..n);
                while buf.len() < len {
                    fill(s, buf)?;
                }
                let body = buf.drain(..len).collect();
                return Ok(RawResponse {
                    status,
                    headers,
                    body,
                });
            }
            fill(s, buf)?;
        }
    }

    fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    fn connect(h: &ServerHandle) -> TcpStream {
        let s = TcpStream::connect(h.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    #[test]
    fn basic_get_and_post() {
        let h = start(ServerConfig::default());
        let base = format!("http://{}", h.local_addr());
        let a = agent();
        let mut r = a.get(format!("{base}/a/b?x=1%202&y=a+b&z")).call().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers().get("x-test").unwrap(), "yes");
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.starts_with("GET /a/b x=1 2,y=a b,z= 0 "), "{body}");

        let mut r = a.post(format!("{base}/p")).send("hello").unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.starts_with("POST /p  5 "), "{body}");
        assert!(body.ends_with(" hello"), "{body}");
        h.shutdown();
    }

    #[test]
    fn keep_alive_reuses_one_connection() {
        let h = start(ServerConfig::default());
        let mut s = connect(&h);
        let mut buf = Vec::new();
        let my_port = s.local_addr().unwrap().port().to_string();
        for i in 0..100 {
            let req = format!(
                "POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{:02}",
                i
            );
            s.write_all(req.as_bytes()).unwrap();
            let r = read_response(&mut s, &mut buf).unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("connection"), Some("keep-alive"));
            let body = String::from_utf8(r.body).unwrap();
            let fields: Vec<&str> = body.split(' ').collect();
            assert_eq!(fields[4], my_port);
            assert_eq!(fields[5], format!("{:02}", i));
        }
        h.shutdown();
    }

    #[test]
    fn pipelined_requests_in_one_write() {
        let h = start(ServerConfig::default());
        let mut s = connect(&h);
        s.write_all(
            b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
              GET /two?q=1 HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let r1 = read_response(&mut s, &mut buf).unwrap();
        let r2 = read_response(&mut s, &mut buf).unwrap();
        let r3 = read_response(&mut s, &mut buf).unwrap();
        assert!(String::from_utf8_lossy(&r1.body).starts_with("POST /one  3"));
        assert!(String::from_utf8_lossy(&r2.body).starts_with("GET /two q=1 0"));
        assert!(String::from_utf8_lossy(&r3.body).starts_with("GET /three  0"));
        assert_eq!(r3.header("connection"), Some("close"));
        // Server closed after the third.
        assert!(fill(&mut s, &mut buf).is_err());
        h.shutdown();
    }

    #[test]
    fn oversized_body_gets_413_without_reading_it() {
        let h = start(ServerConfig {
            max_body_bytes: 1024,
            ..ServerConfig::default()
        });
        let mut s = connect(&h);
        // Announce 100 MB but send only the head: the answer must come anyway.
        s.write_all(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(r.status, 413);
        assert_eq!(r.header("connection"), Some("close"));

        // Chunked bodies are limited while decoding.
        let mut s = connect(&h);
        let chunk = vec![b'a'; 800];
        let mut req = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..2 {
            req.extend_from_slice(b"320\r\n");
            req.extend_from_slice(&chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        s.write_all(&req).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 413);

        // The limit itself is fine.
        let mut s = connect(&h);
        let mut req = b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n".to_vec();
        req.extend_from_slice(&[b'z'; 1024]);
        s.write_all(&req).unwrap();
        assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
        h.shutdown();
    }

    #[test]
    fn garbage_gets_400_and_close() {
        let h = start(ServerConfig::default());
        for garbage in [
            &b"GARBAGE\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let mut s = connect(&h);
            s.write_all(garbage).unwrap();
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf).unwrap();
            assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(garbage));
            assert_eq!(r.header("connection"), Some("close"));
        }
        let mut s = connect(&h);
        s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().status, 501);
        h.shutdown();
    }

    #[test]
    fn oversized_headers_get_431() {
        let h = start(ServerConfig {
            max_header_bytes: 4096,
            ..ServerConfig::default()
        });
        let mut s = connect(&h);
        let req = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
        let _ = s.write_all(req.as_bytes());
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        assert_eq!(r.status, 431);
        // Too many headers.
        let mut s = connect(&h);
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..200 {
            req.push_str(&format!("X-{i}: 1\r\n"));
        }
        req.push_str("\r\n");
        let _ = s.write_all(req.as_bytes());
        assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().status, 431);
        h.shutdown();
    }

    #[test]
    fn chunked_body_and_expect_continue() {
        let h = start(ServerConfig::default());
        let mut s = connect(&h);
        s.write_all(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(text.starts_with("POST /c  11 "), "{text}");
        assert!(text.ends_with(" hello world"), "{text}");

        // Expect: 100-continue: interim response first, then the body.
        s.write_all(
            b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        )
        .unwrap();
        let interim = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(interim.status, 100);
        s.write_all(b"body").unwrap();
        let r = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(r.status, 200);
        assert!(String::from_utf8_lossy(&r.body).ends_with(" body"));
        // And ureq (which may use Expect itself) works with a larger body.
        let big = vec![b'x'; 200_000];
        let mut r = agent()
            .post(format!("http://{}/big", h.local_addr()))
            .send(&big[..])
            .unwrap();
        assert!(r.body_mut().read_to_string().unwrap().contains(" 200000 "));
        h.shutdown();
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let h = start(ServerConfig::default());
        let mut s = connect(&h);
        s.write_all(b"GET /x HTTP/1.0\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(r.header("connection"), Some("close"));
        assert!(fill(&mut s, &mut buf).is_err());

        let mut s = connect(&h);
        for _ in 0..3 {
            s.write_all(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap();
            let r = read_response(&mut s, &mut buf).unwrap();
            assert_eq!(r.header("connection"), Some("keep-alive"));
        }
        h.shutdown();
    }

    #[test]
    fn handler_panic_gives_500_and_server_survives() {
        let h = start(ServerConfig::default());
        let mut s = connect(&h);
        let mut buf = Vec::new();
        s.write_all(b"GET /panic HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 500);
        // Same connection still works, and so do new ones.
        s.write_all(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
        let r = agent()
            .get(format!("http://{}/again", h.local_addr()))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        h.shutdown();
    }

    #[test]
    fn many_concurrent_keep_alive_clients_do_not_stall() {
        const CLIENTS: usize = 64;
        const REQUESTS: usize = 200;
        let h = start(ServerConfig::default());
        let url = format!("http://{}/load", h.local_addr());
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        for c in 0..CLIENTS {
            let tx = tx.clone();
            let url = url.clone();
            thread::spawn(move || {
                let a = agent();
                let mut ok = 0;
                for i in 0..REQUESTS {
                    let body = format!("{c}-{i}");
                    let mut r = a.post(&url).send(body.as_bytes()).unwrap();
                    let text = r.body_mut().read_to_string().unwrap();
                    if r.status().as_u16() == 200 && text.ends_with(&format!(" {body}")) {
                        ok += 1;
                    }
                }
                let _ = tx.send(ok);
            });
        }
        drop(tx);
        let deadline = started + Duration::from_secs(20);
        let mut total = 0;
        for _ in 0..CLIENTS {
            let left = deadline.saturating_duration_since(Instant::now());
            total += rx
                .recv_timeout(left)
                .expect("clients stalled: not done within 20 s");
        }
        assert_eq!(total, CLIENTS * REQUESTS);
        eprintln!("{} requests in {:?}", total, started.elapsed());
        h.shutdown();
    }

    #[test]
    fn connections_beyond_the_limit_get_503() {
        let h = start(ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        });
        let mut held = Vec::new();
        let mut buf = Vec::new();
        for _ in 0..2 {
            let mut s = connect(&h);
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
            held.push(s);
        }
        let mut s = connect(&h);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("connection"), Some("close"));
        // Freeing a slot lets new connections in again.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = connect(&h);
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            if read_response(&mut s, &mut Vec::new())
                .map(|r| r.status)
                .ok()
                == Some(200)
            {
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            thread::sleep(Duration::from_millis(20));
        }
        h.shutdown();
    }

    #[test]
    fn shutdown_is_prompt_with_idle_keep_alive_connection() {
        // 30 s idle timeout; `/sleep` reports that it started, then takes 300 ms.
        let (entered_tx, entered) = mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let h = Server::bind("127.0.0.1:0", ServerConfig::default())
            .unwrap()
            .serve(move |req: Request| {
                if req.path == "/sleep" {
                    let _ = entered_tx.lock().unwrap().send(());
                    thread::sleep(Duration::from_millis(300));
                }
                Response::text(200, "ok")
            })
            .unwrap();
        let mut idle = connect(&h);
        let mut buf = Vec::new();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut idle, &mut buf).unwrap().status, 200);
        let addr = h.local_addr();

        // An in-flight request is answered before shutdown completes.
        let mut busy = connect(&h);
        busy.write_all(b"GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        entered.recv_timeout(Duration::from_secs(10)).unwrap();

        let t = Instant::now();
        h.shutdown();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
        // The idle connection was closed; the busy one got its answer + close.
        assert!(fill(&mut idle, &mut buf).is_err());
        let r = read_response(&mut busy, &mut Vec::new()).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"));
        // No longer accepting.
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn query_pairs_decode() {
        let req = Request {
            method: "GET".into(),
            path: "/".into(),
            query: "a=%41%2b%zz&b=x+y&&c=%E2%9C%93&d=%".into(),
            headers: vec![("Content-Type".into(), "x".into())],
            body: vec![],
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        assert_eq!(
            req.query_pairs(),
            vec![
                ("a".into(), "A+%zz".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "\u{2713}".into()),
                ("d".into(), "%".into()),
            ]
        );
        assert_eq!(req.header("content-type"), Some("x"));
        assert_eq!(req.header("nope"), None);
    }
}
