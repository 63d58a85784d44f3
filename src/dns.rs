//! Name resolution for the HTTP client: IP literals without a lookup, names cached briefly.
//!
//! Why: ureq 3 resolves the host on every request, before it looks in its connection pool,
//! and when a deadline is set (ours always is) it runs each lookup on a thread of its own.
//! That is a thread spawned and a `getaddrinfo` per delivery even on a kept-alive connection;
//! measured on 2 cores it held bare POSTs to ~13-15k/s. The pool is keyed by scheme and
//! host, so the addresses only matter when a new connection is opened; caching them for a
//! few seconds changes nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a looked-up name's addresses are reused. Default 10 s: a changed DNS record
/// reaches new connections within that, as with a resolver that honours a short TTL.
pub const DNS_CACHE_TTL: Duration = Duration::from_secs(10);

/// Most names held at once; past it, expired entries go, and if none had expired, all go
/// (a bound for an install with very many distinct hosts, not an eviction policy).
const MAX_CACHED_NAMES: usize = 1024;

/// A [`Resolver`] that answers IP literals itself and caches each name's addresses for
/// [`DNS_CACHE_TTL`]. Failed lookups are not cached.
#[derive(Debug, Default)]
pub struct CachingResolver {
    lookup: DefaultResolver,
    cache: Mutex<TtlCache>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let Some(host_port) = uri
            .scheme()
            .zip(uri.authority())
            .and_then(|(scheme, authority)| DefaultResolver::host_and_port(scheme, authority))
        else {
            // Not a full URL: the default resolver gives ureq's own error for it.
            return self.lookup.resolve(uri, config, timeout);
        };
        if let Ok(addr) = host_port.parse::<SocketAddr>() {
            let mut addrs = self.empty();
            for wanted in config.ip_family().keep_wanted(std::iter::once(addr)) {
                addrs.push(wanted);
            }
            return if addrs.is_empty() {
                Err(ureq::Error::HostNotFound)
            } else {
                Ok(addrs)
            };
        }
        let now = Instant::now();
        if let Some(addrs) = self.cache().get(&host_port, now) {
            return Ok(addrs);
        }
        // Looked up without holding the lock: a slow DNS server must not stall other hosts.
        let addrs = self.lookup.resolve(uri, config, timeout)?;
        self.cache().insert(host_port, addrs.clone(), now);
        Ok(addrs)
    }
}

impl CachingResolver {
    fn cache(&self) -> std::sync::MutexGuard<'_, TtlCache> {
        // The cache holds no invariant a panic could break; a poisoned one is still usable.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Addresses by `host:port`, each with when it was looked up. Pure: the caller gives the time.
#[derive(Debug, Default)]
struct TtlCache {
    entries: HashMap<String, (Instant, ResolvedSocketAddrs)>,
}

impl TtlCache {
    fn get(&self, key: &str, now: Instant) -> Option<ResolvedSocketAddrs> {
        let (at, addrs) = self.entries.get(key)?;
        (now.saturating_duration_since(*at) < DNS_CACHE_TTL).then(|| addrs.clone())
    }

    fn insert(&mut self, key: String, addrs: ResolvedSocketAddrs, now: Instant) {
        if self.entries.len() >= MAX_CACHED_NAMES && !self.entries.contains_key(&key) {
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < DNS_CACHE_TTL);
            if self.entries.len() >= MAX_CACHED_NAMES {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (now, addrs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(last_octet: u8) -> ResolvedSocketAddrs {
        let mut a = CachingResolver::default().empty();
        a.push(SocketAddr::from(([10, 0, 0, last_octet], 80)));
        a
    }

    #[test]
    fn an_entry_is_reused_until_its_ttl_ends() {
        let t0 = Instant::now();
        let mut cache = TtlCache::default();
        cache.insert("a:80".into(), addrs(1), t0);
        assert_eq!(cache.get("a:80", t0 + DNS_CACHE_TTL / 2), Some(addrs(1)));
        assert_eq!(cache.get("a:80", t0 + DNS_CACHE_TTL), None);
        assert_eq!(cache.get("b:80", t0), None);
        cache.insert("a:80".into(), addrs(2), t0 + DNS_CACHE_TTL);
        assert_eq!(cache.get("a:80", t0 + DNS_CACHE_TTL), Some(addrs(2)));
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_then_everything() {
        let t0 = Instant::now();
        let mut cache = TtlCache::default();
        for i in 0..MAX_CACHED_NAMES - 1 {
            cache.insert(format!("old{i}:80"), addrs(1), t0);
        }
        let later = t0 + DNS_CACHE_TTL;
        cache.insert("fresh:80".into(), addrs(2), later);
        assert_eq!(cache.entries.len(), MAX_CACHED_NAMES);
        cache.insert("next:80".into(), addrs(3), later);
        assert_eq!(cache.entries.len(), 2, "the expired ones went");
        assert_eq!(cache.get("fresh:80", later), Some(addrs(2)));

        for i in 0..MAX_CACHED_NAMES {
            cache.insert(format!("live{i}:80"), addrs(4), later);
        }
        assert!(cache.entries.len() <= MAX_CACHED_NAMES);
    }

    fn resolve(url: &str) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        let config = Config::default();
        CachingResolver::default().resolve(&uri, &config, NextTimeout::default())
    }

    #[test]
    fn ip_literals_are_answered_without_a_lookup() {
        let v4 = resolve("http://127.0.0.1:8080/hook").unwrap();
        assert_eq!(&v4[..], &[SocketAddr::from(([127, 0, 0, 1], 8080))]);
        let v6 = resolve("https://[::1]/hook").unwrap();
        assert_eq!(v6[0], "[::1]:443".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn names_are_looked_up_and_failures_reported() {
        let local = resolve("http://localhost:9/").unwrap();
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        assert!(resolve("http://no-such-host.invalid/").is_err());
    }
}
