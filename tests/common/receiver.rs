#![allow(dead_code)]
//! A scriptable webhook receiver for integration tests.
//!
//! Built on raw `std::net` (plus httparse), not on outbox's own HTTP server, so
//! it can misbehave on purpose. One thread per connection, TCP_NODELAY,
//! HTTP/1.1 keep-alive, `Content-Length` and chunked request bodies.
//!
//! A request is recorded (visible to [`Receiver::received`] / [`Receiver::wait_for`])
//! as soon as it has been read in full, *before* its reply is sent; so a `Slow`
//! reply's request is already counted while the client still waits.
//!
//! Dropping the receiver stops it: the accept thread is woken by a self-connect,
//! connection threads notice the stop flag within ~100 ms (their reads poll),
//! and `Slow` replies cut their sleep short. Drop joins all of them.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This status, a short text body, keep-alive.
    Status(u16),
    /// This status plus extra headers (e.g. `Retry-After`).
    StatusWithHeaders(u16, Vec<(String, String)>),
    /// Waits `delay`, then answers `status`.
    Slow { delay: Duration, status: u16 },
    /// Writes a truncated response head (`HTTP/1.1 200 OK\r\nContent-Le`) and
    /// closes the connection. The head never completes, so the client fails
    /// while reading the status/headers (an EOF / "connection closed" / reset
    /// error, never a status code). No true RST (SO_LINGER 0) is used: std's
    /// `set_linger` is unstable and we keep this file dependency-free.
    ResetMidResponse,
    /// Reads the request, then closes the connection without writing anything.
    CloseWithoutResponse,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The raw request target (path and query, if any).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request had been read in full.
    pub at: Instant,
}

impl Received {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type ReplyFn = dyn Fn(&Received) -> Reply + Send + Sync;

struct Inner {
    stop: AtomicBool,
    /// Connections accepted so far.
    connections: AtomicUsize,
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    reply: Box<ReplyFn>,
}

/// A running receiver on 127.0.0.1 (ephemeral port). Stops on drop.
pub struct Receiver {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    /// The n-th request (0-based, in arrival order) gets `script[n]`; later
    /// requests get `then`.
    pub fn start(script: Vec<Reply>, then: Reply) -> Receiver {
        let next = AtomicUsize::new(0);
        Receiver::start_fn(move |_| {
            let n = next.fetch_add(1, Ordering::SeqCst);
            script.get(n).cloned().unwrap_or_else(|| then.clone())
        })
    }

    /// Every request is answered with `f(&request)`; `f` may keep its own state
    /// (e.g. a per-delivery-id script keyed by a header).
    pub fn start_fn(f: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let inner = Arc::new(Inner {
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            reply: Box::new(f),
        });
        let accept_inner = Arc::clone(&inner);
        let accept = thread::Builder::new()
            .name("receiver-accept".into())
            .spawn(move || accept_loop(listener, accept_inner))
            .expect("spawn receiver");
        Receiver {
            inner,
            addr,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT/hook`
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The socket address the receiver listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections clients have opened so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// All requests so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().clone()
    }

    /// Blocks until at least `n` requests arrived or `timeout` passed, then
    /// returns everything received so far (check the length).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut got = self.lock();
        while got.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            got = self
                .inner
                .arrived
                .wait_timeout(got, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        got.clone()
    }

    /// How many requests carried each value of header `name` (requests
    /// without it are not counted), e.g. attempts per `X-Dograh-Delivery-Id`.
    pub fn count_by_header(&self, name: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.lock().iter() {
            if let Some(v) = r.header(name) {
                *counts.entry(v.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        self.inner
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A URL on 127.0.0.1 whose port refuses connections (a port we bound and
/// released; nothing else is expected to grab it during a test).
pub fn refused_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}/hook")
}

/// How often blocked reads wake up to check the stop flag.
const POLL: Duration = Duration::from_millis(100);

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = listener.accept();
        if inner.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok((stream, _)) = accepted else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        inner.connections.fetch_add(1, Ordering::SeqCst);
        conns.retain(|h| !h.is_finished());
        let conn_inner = Arc::clone(&inner);
        if let Ok(h) = thread::Builder::new()
            .name("receiver-conn".into())
            .spawn(move || {
                let _ = serve_connection(stream, &conn_inner);
            })
        {
            conns.push(h);
        }
    }
    for h in conns {
        let _ = h.join();
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes; Ok(false) on EOF or stop. Read timeouts just poll.
    fn fill(&mut self, inner: &Inner) -> io::Result<bool> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            if inner.stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            match self.stream.read(&mut tmp) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes sure at least `n` bytes are buffered; Ok(false) on EOF/stop.
    fn need(&mut self, n: usize, inner: &Inner) -> io::Result<bool> {
        while self.buf.len() < n {
            if !self.fill(inner)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn serve_connection(stream: TcpStream, inner: &Inner) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    while let Some((req, keep_alive)) = read_request(&mut conn, inner)? {
        let reply = (inner.reply)(&req);
        {
            let mut got = inner.received.lock().unwrap_or_else(|e| e.into_inner());
            got.push(req);
            inner.arrived.notify_all();
        }
        let (status, extra) = match reply {
            Reply::Status(s) => (s, Vec::new()),
            Reply::StatusWithHeaders(s, h) => (s, h),
            Reply::Slow { delay, status } => {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if inner.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    thread::sleep(
                        until
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(20)),
                    );
                }
                (status, Vec::new())
            }
            Reply::ResetMidResponse => {
                conn.stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le")?;
                let _ = conn.stream.flush();
                let _ = conn.stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            Reply::CloseWithoutResponse => {
                let _ = conn.stream.shutdown(Shutdown::Both);
                return Ok(());
            }
        };
        // 1xx/204/304 must not carry a body (nor Content-Length).
        let bodiless = status < 200 || status == 204 || status == 304;
        let body = if bodiless {
            String::new()
        } else {
            format!("{status}\n")
        };
        let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in &extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !bodiless {
            out.push_str(&format!(
                "Content-Type: text/plain\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        conn.stream.write_all(out.as_bytes())?;
        if !keep_alive {
            let _ = conn.stream.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
    Ok(())
}

/// Reads one request (head + body). None on EOF/stop; Err on garbage/IO errors
/// (the connection is then simply dropped).
fn read_request(conn: &mut Conn, inner: &Inner) -> io::Result<Option<(Received, bool)>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let (method, path, version, headers, head_len) = loop {
        if !conn.buf.is_empty() {
            let mut hdrs = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Request::new(&mut hdrs);
            match r.parse(&conn.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = r
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
                        r.method.unwrap_or_default().to_string(),
                        r.path.unwrap_or_default().to_string(),
                        r.version.unwrap_or(1),
                        headers,
                        n,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(bad(&format!("bad request head: {e}"))),
            }
        }
        if !conn.fill(inner)? {
            return Ok(None);
        }
    };
    conn.buf.drain(..head_len);
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let has_token = |v: &str, t: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
    let connection = find("connection").unwrap_or_default();
    let keep_alive = if version == 0 {
        has_token(&connection, "keep-alive")
    } else {
        !has_token(&connection, "close")
    };
    if find("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = if find("transfer-encoding").is_some_and(|v| has_token(&v, "chunked")) {
        let mut body = Vec::new();
        loop {
            let (used, size) = loop {
                match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete(x)) => break x,
                    Ok(httparse::Status::Partial) => {
                        if !conn.fill(inner)? {
                            return Ok(None);
                        }
                    }
                    Err(_) => return Err(bad("bad chunk size")),
                }
            };
            conn.buf.drain(..used);
            if size == 0 {
                // Skip trailers up to the empty line.
                loop {
                    if let Some(p) = conn.buf.windows(2).position(|w| w == b"\r\n") {
                        conn.buf.drain(..p + 2);
                        if p == 0 {
                            break;
                        }
                    } else if !conn.fill(inner)? {
                        return Ok(None);
                    }
                }
                break;
            }
            let size = size as usize;
            if !conn.need(size + 2, inner)? {
                return Ok(None);
            }
            body.extend_from_slice(&conn.buf[..size]);
            conn.buf.drain(..size + 2);
        }
        body
    } else {
        let len: usize = match find("content-length") {
            Some(v) => v.parse().map_err(|_| bad("bad content-length"))?,
            None => 0,
        };
        if !conn.need(len, inner)? {
            return Ok(None);
        }
        conn.buf.drain(..len).collect()
    };
    Ok(Some((
        Received {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        },
        keep_alive,
    )))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        410 => "Gone",
        422 => "Unprocessable Content",
        425 => "Too Early",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
