//! Sending one HTTP request: the `Sender` trait (so the engine can be tested with a fake) and
//! its ureq implementation, set up for webhooks: no redirects, a total deadline, no proxy from
//! the environment, a connection pool large enough for every sender thread, and names
//! resolved through a short cache (see `dns`).

use std::io::Read;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use crate::delivery::RESPONSE_EXCERPT_BYTES;
use crate::dns::CachingResolver;

/// One request to send.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    /// The JSON body; `None` for GET and DELETE.
    pub body: Option<&'a [u8]>,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The receiver answered (any status).
    Received {
        status: u16,
        retry_after: Option<String>,
        /// The first [`RESPONSE_EXCERPT_BYTES`] of the body, lossily decoded.
        excerpt: String,
    },
    /// No answer: refused, reset, timed out, bad URL, ... (always worth a retry).
    Failed { error: String },
}

/// Sends requests. Implementations must be shareable by all sender threads.
pub trait Sender: Send + Sync {
    /// Sends one request and reads (part of) the response.
    fn send(&self, request: &Request) -> Response;

    /// Closes kept-alive connections and forgets cached lookups, so an idle service holds no
    /// buffers for them. Called once the engine has been idle a while; the next send reconnects.
    fn release_idle(&self) {}
}

/// Settings of the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Total deadline of one request, connect to last body byte. Default 30 s (the origin's
    /// `WEBHOOK_DELIVERY_TIMEOUT_SECONDS`, now a real deadline rather than per phase).
    pub timeout: Duration,
    /// Connect deadline, part of `timeout`. Default 10 s.
    pub connect_timeout: Duration,
    /// Idle connections kept per host: at least the number of senders, or senders reconnect
    /// constantly (measured: ureq's default of 3 made more than 3 senders reconnect
    /// ~1-3k times/s). Default 16.
    pub idle_per_host: usize,
    /// An explicit proxy URL. Default none: the environment's proxy variables are not used,
    /// since an appliance's HTTP_PROXY is seldom meant for webhooks.
    pub proxy: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            idle_per_host: 16,
            proxy: None,
        }
    }
}

/// How much of a body is read and thrown away after the excerpt so the connection can be
/// reused; a longer body closes the connection instead.
const DRAIN_LIMIT: u64 = 256 * 1024;

/// The real sender, over one shared ureq agent.
pub struct UreqSender {
    config: ureq::config::Config,
    /// Replaced by a fresh agent in `release_idle`: ureq only prunes its pool when it is used,
    /// and each pooled connection holds 256 KiB of zeroed buffers (measured: 1 MiB of an idle
    /// service's RSS after a drain with 4 senders).
    agent: RwLock<ureq::Agent>,
}

impl UreqSender {
    /// Builds the agent.
    ///
    /// # Errors
    /// A message when the proxy URL does not parse.
    pub fn new(config: &HttpConfig) -> Result<UreqSender, String> {
        let proxy = match &config.proxy {
            Some(url) => Some(
                ureq::Proxy::new(url).map_err(|e| format!("proxy {url:?} is not usable: {e}"))?,
            ),
            None => None,
        };
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.connect_timeout.min(config.timeout)))
            .proxy(proxy)
            .max_idle_connections_per_host(config.idle_per_host.max(1))
            .max_idle_connections(config.idle_per_host.max(1) * 4)
            .user_agent(concat!("outbox/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(UreqSender {
            agent: RwLock::new(new_agent(&agent_config)),
            config: agent_config,
        })
    }

    fn agent(&self) -> ureq::Agent {
        self.agent
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn new_agent(config: &ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config.clone(),
        ureq::unversioned::transport::DefaultConnector::new(),
        CachingResolver::default(),
    )
}

impl Sender for UreqSender {
    fn send(&self, request: &Request) -> Response {
        let agent = self.agent();
        let mut builder = ureq::http::Request::builder()
            .method(request.method)
            .uri(request.url);
        for (name, value) in request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let result = match request.body {
            Some(body) => builder
                .body(body)
                .map_err(|e| e.to_string())
                .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
            None => builder
                .body(())
                .map_err(|e| e.to_string())
                .and_then(|r| agent.run(r).map_err(|e| e.to_string())),
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => return Response::Failed { error },
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut reader = response.body_mut().as_reader();
        let mut excerpt = Vec::with_capacity(RESPONSE_EXCERPT_BYTES);
        let read = (&mut reader)
            .take(RESPONSE_EXCERPT_BYTES as u64)
            .read_to_end(&mut excerpt)
            .and_then(|_| {
                std::io::copy(&mut (&mut reader).take(DRAIN_LIMIT), &mut std::io::sink())
            });
        if let Err(e) = read {
            // The status arrived but the body broke off (reset, timeout): the receiver's
            // answer is not trustworthy, so this counts as no answer.
            return Response::Failed {
                error: format!("HTTP {status}, then the response body failed: {e}"),
            };
        }
        Response::Received {
            status,
            retry_after,
            excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
        }
    }

    fn release_idle(&self) {
        // A send still running keeps the old agent (and its connection) until it returns.
        *self.agent.write().unwrap_or_else(PoisonError::into_inner) = new_agent(&self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A keep-alive receiver on 127.0.0.1 that answers 200 to every request and reports each
    /// connection it accepts, and each one that the client closes.
    fn counting_receiver() -> (String, mpsc::Receiver<&'static str>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (events, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let events = events.clone();
                std::thread::spawn(move || {
                    let _ = events.send("opened");
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                let _ = events.send("closed");
                                return;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    }
                });
            }
        });
        (url, seen)
    }

    fn post(sender: &UreqSender, url: &str) -> Response {
        sender.send(&Request {
            method: "POST",
            url,
            headers: &[],
            body: Some(b"{}"),
        })
    }

    #[test]
    fn connections_are_kept_alive_until_released_when_idle() {
        let (url, events) = counting_receiver();
        let sender = UreqSender::new(&HttpConfig::default()).unwrap();
        let wait = || events.recv_timeout(Duration::from_secs(5)).unwrap();
        let ok =
            |r: Response| assert!(matches!(r, Response::Received { status: 200, .. }), "{r:?}");

        ok(post(&sender, &url));
        ok(post(&sender, &url));
        assert_eq!(wait(), "opened");
        assert!(
            events.try_recv().is_err(),
            "the second request reused the connection"
        );

        sender.release_idle();
        assert_eq!(wait(), "closed", "releasing closes the pooled connection");
        ok(post(&sender, &url));
        assert_eq!(wait(), "opened", "and the next request opens a new one");
    }
}
