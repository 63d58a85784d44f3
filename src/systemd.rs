//! systemd integration. STUB: no-ops until the real implementation (sd_notify READY/STOPPING,
//! watchdog) replaces this file.

/// Tells systemd the service is ready (`READY=1`). No-op in this stub.
pub fn notify_ready() {}

/// Tells systemd the service is stopping (`STOPPING=1`). No-op in this stub.
pub fn notify_stopping() {}

/// Starts the watchdog pinger when `WATCHDOG_USEC` is set. No-op in this stub.
pub fn spawn_watchdog() {}
