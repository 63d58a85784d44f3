//! systemd integration without a crate: the `sd_notify` protocol (one datagram of
//! `KEY=VALUE` lines to the socket named by `$NOTIFY_SOCKET`) and the watchdog pinger.
//!
//! Outside systemd `$NOTIFY_SOCKET` is unset and everything here does nothing, so the same
//! binary runs under systemd, in a container or on a laptop.
//!
//! Not done: unsetting `$NOTIFY_SOCKET` after use (as `sd_notify(1, ...)` may), since outbox
//! starts no child processes that could inherit it; `vsock:` addresses, which only matter
//! inside virtual machines managed from the host.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Sends `state` (for example `READY=1`, or several `KEY=VALUE` lines) to the service manager.
///
/// Returns `Ok(false)` when not running under systemd (`$NOTIFY_SOCKET` unset or empty) and
/// `Ok(true)` once the datagram is sent.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] when `$NOTIFY_SOCKET` is neither an absolute path nor an
/// abstract name starting with `@`; otherwise the error of creating or sending on the socket
/// (for example `ConnectionRefused` when nothing listens there any more).
pub fn notify(state: &str) -> io::Result<bool> {
    match notify_socket() {
        Some(socket) => send_to(&socket, state).map(|()| true),
        None => Ok(false),
    }
}

/// Tells systemd the service is ready (`READY=1`): with `Type=notify`, `systemctl start`
/// returns, and units ordered after outbox start, only once this is sent. Call it after the
/// store is migrated and the API listens. A failure is logged, not returned: the service works
/// either way, and systemd reports a start timeout itself.
pub fn notify_ready() {
    log_failure("READY=1", notify("READY=1"));
}

/// Tells systemd the service is stopping (`STOPPING=1`), so `systemctl status` says
/// "deactivating" during the drain rather than "active". A failure is logged, not returned.
pub fn notify_stopping() {
    log_failure("STOPPING=1", notify("STOPPING=1"));
}

/// Starts a thread that sends `WATCHDOG=1` every half `$WATCHDOG_USEC` while `health()`
/// returns true, when systemd asked for a watchdog (`WatchdogSec=` in the unit sets
/// `$WATCHDOG_USEC`, and `$WATCHDOG_PID`, if set, is this process). Returns whether it
/// started.
///
/// Why a health check: a thread that pings unconditionally keeps a wedged service "healthy"
/// forever. When `health()` returns false, or blocks (a store stuck on a lock), the pings stop,
/// and after `WatchdogSec` systemd kills the service and, with `Restart=on-failure`, starts it
/// again. Pings resume if `health()` passes again before that. `health()` runs once per ping,
/// so it should take well under half the interval.
pub fn spawn_watchdog_with(health: impl Fn() -> bool + Send + 'static) -> bool {
    let Some(socket) = notify_socket() else {
        return false;
    };
    let lookup = |name: &str| std::env::var(name).ok();
    let Some(interval) = watchdog_interval(lookup, std::process::id()) else {
        return false;
    };
    // Nobody stops the service's pinger: it lives as long as the process.
    let never = Arc::new(AtomicBool::new(false));
    match spawn_pinger(socket, interval, health, never) {
        Ok(_) => {
            log::info!(
                "systemd watchdog: pinging every {} ms",
                interval.as_millis()
            );
            true
        }
        Err(e) => {
            log::warn!("systemd watchdog: cannot start the pinger thread: {e}");
            false
        }
    }
}

/// `$NOTIFY_SOCKET`, unless unset or empty.
fn notify_socket() -> Option<OsString> {
    std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())
}

/// Sends one datagram to `socket`: an absolute path, or `@name` for an abstract socket (the
/// leading `@` stands for the NUL byte that starts an abstract address).
fn send_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])?
        }
        Some(b'/') => SocketAddr::from_pathname(socket)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET {:?} is neither an absolute path nor an abstract name (@...)",
                    socket
                ),
            ));
        }
    };
    let datagram = UnixDatagram::unbound()?;
    let sent = datagram.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        // Datagrams are all or nothing; a short count would mean a truncated message.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

/// Half of `$WATCHDOG_USEC`, the interval systemd recommends, when the watchdog is asked for
/// and meant for process `pid`. `None` when `$WATCHDOG_USEC` is unset, zero or not a number,
/// or `$WATCHDOG_PID` names another process (the variables were inherited from a parent).
fn watchdog_interval(lookup: impl Fn(&str) -> Option<String>, pid: u32) -> Option<Duration> {
    let usec: u64 = lookup("WATCHDOG_USEC")?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(watchdog_pid) = lookup("WATCHDOG_PID").filter(|p| !p.trim().is_empty())
        && watchdog_pid.trim().parse::<u32>().ok() != Some(pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// The pinger thread: ping at once, then every `interval`, while `health()` passes; ends when
/// `stop` is set (tests only; the service's pinger runs until the process exits).
fn spawn_pinger(
    socket: OsString,
    interval: Duration,
    health: impl Fn() -> bool + Send + 'static,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("outbox-watchdog".into())
        .spawn(move || {
            // Log transitions only, not every missed ping.
            let mut healthy = true;
            while !stop.load(Ordering::Acquire) {
                if health() {
                    if !healthy {
                        log::info!("systemd watchdog: healthy again, pings resume");
                        healthy = true;
                    }
                    if let Err(e) = send_to(&socket, "WATCHDOG=1") {
                        log::warn!("systemd watchdog: ping failed: {e}");
                    }
                } else if healthy {
                    log::error!(
                        "systemd watchdog: health check failed, pings stop (systemd restarts \
                         the service unless it recovers)"
                    );
                    healthy = false;
                }
                std::thread::sleep(interval);
            }
        })
}

fn log_failure(state: &str, result: io::Result<bool>) {
    if let Err(e) = result {
        log::warn!("systemd notify {state}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;

    /// Tests that set or read process environment variables hold this, so they do not see
    /// each other's values.
    static ENV: Mutex<()> = Mutex::new(());

    /// Sets (or with `None` removes) an environment variable.
    fn set_env(name: &str, value: Option<&OsStr>) {
        // SAFETY: every test that touches the environment holds `ENV`, and nothing else in
        // this crate's unit tests reads it (configuration is read through a lookup closure).
        unsafe {
            match value {
                Some(v) => std::env::set_var(name, v),
                None => std::env::remove_var(name),
            }
        }
    }

    /// A datagram listener bound in a fresh temporary directory.
    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, path, socket)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn notify_sends_ready_and_stopping_to_notify_socket() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let (_dir, path, socket) = listener();
        set_env("NOTIFY_SOCKET", Some(path.as_os_str()));
        assert!(notify("STATUS=testing").unwrap());
        assert_eq!(receive(&socket), "STATUS=testing");
        notify_ready();
        assert_eq!(receive(&socket), "READY=1");
        notify_stopping();
        assert_eq!(receive(&socket), "STOPPING=1");
        set_env("NOTIFY_SOCKET", None);
    }

    #[test]
    fn notify_without_systemd_is_a_quiet_no() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        set_env("NOTIFY_SOCKET", None);
        assert!(!notify("READY=1").unwrap());
        set_env("NOTIFY_SOCKET", Some(OsStr::new("")));
        assert!(!notify("READY=1").unwrap());
        // The no-error wrappers do nothing either.
        notify_ready();
        assert!(!spawn_watchdog_with(|| true));
        set_env("NOTIFY_SOCKET", None);
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("outbox-test-{}-{}", std::process::id(), line!());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        set_env("NOTIFY_SOCKET", Some(OsStr::new(&format!("@{name}"))));
        assert!(notify("READY=1").unwrap());
        assert_eq!(receive(&socket), "READY=1");
        set_env("NOTIFY_SOCKET", None);
    }

    #[test]
    fn bad_or_dead_notify_socket_is_an_error() {
        let e = send_to(OsStr::new("relative/notify.sock"), "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("relative/notify.sock"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens.sock");
        assert!(send_to(missing.as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_this_pid() {
        let pid = 4242;
        let half = Some(Duration::from_secs(15));
        assert_eq!(
            watchdog_interval(lookup(&[("WATCHDOG_USEC", "30000000")]), pid),
            half
        );
        assert_eq!(
            watchdog_interval(
                lookup(&[("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "4242")]),
                pid
            ),
            half
        );
        // Inherited from a parent that was the one being watched.
        assert_eq!(
            watchdog_interval(
                lookup(&[("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "1")]),
                pid
            ),
            None
        );
        for bad in ["", "0", "soon", "-5"] {
            assert_eq!(
                watchdog_interval(lookup(&[("WATCHDOG_USEC", bad)]), pid),
                None
            );
        }
        assert_eq!(watchdog_interval(lookup(&[]), pid), None);
    }

    #[test]
    fn pinger_pings_while_healthy_and_stops_when_not() {
        let (_dir, path, socket) = listener();
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let check = Arc::clone(&healthy);
        let pinger = spawn_pinger(
            path.into_os_string(),
            Duration::from_millis(10),
            move || check.load(Ordering::Acquire),
            Arc::clone(&stop),
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(receive(&socket), "WATCHDOG=1");
        }
        healthy.store(false, Ordering::Release);
        // Drain what was sent before the flag was seen, then expect silence.
        std::thread::sleep(Duration::from_millis(50));
        socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        while socket.recv(&mut buf).is_ok() {}
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            socket.recv(&mut buf).is_err(),
            "no ping while the health check fails"
        );
        // Recovery resumes the pings.
        socket.set_nonblocking(false).unwrap();
        healthy.store(true, Ordering::Release);
        assert_eq!(receive(&socket), "WATCHDOG=1");
        stop.store(true, Ordering::Release);
        pinger.join().unwrap();
    }

    #[test]
    fn spawn_watchdog_reads_the_environment() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let (_dir, path, socket) = listener();
        set_env("NOTIFY_SOCKET", Some(path.as_os_str()));
        set_env("WATCHDOG_USEC", Some(OsStr::new("20000")));
        set_env(
            "WATCHDOG_PID",
            Some(OsStr::new(&std::process::id().to_string())),
        );
        // The thread outlives the test; the flag silences it once the test is done.
        let live = Arc::new(AtomicBool::new(true));
        let check = Arc::clone(&live);
        let started = Instant::now();
        assert!(spawn_watchdog_with(move || check.load(Ordering::Acquire)));
        assert_eq!(receive(&socket), "WATCHDOG=1");
        assert_eq!(receive(&socket), "WATCHDOG=1");
        // The first ping goes at once, the second after half of WATCHDOG_USEC (10 ms).
        assert!(started.elapsed() >= Duration::from_millis(10));
        live.store(false, Ordering::Release);
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            set_env(name, None);
        }
    }
}
