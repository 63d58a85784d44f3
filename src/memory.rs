//! The allocator's settings, and giving freed heap memory back to the operating system.
//!
//! glibc keeps memory freed by a thread in that thread's arena for reuse; after a burst (a
//! backlog drained, many API clients) the process's resident size stays at its peak although
//! nothing uses it. An appliance runs many services side by side, so once the engine is idle
//! again it asks glibc to return what is free (measured: RSS after a load fell from ~20 MiB
//! by ~3 MiB; see the README for what the rest is).

/// Returns free heap pages to the OS. Cheap when there is nothing to return; a no-op where the
/// C library is not glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and only works on the allocator's own free
        // lists; glibc documents it as safe to call at any time from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Sets up glibc's allocator for a long-running service that is idle most of the time. Call it
/// first, before starting threads. A no-op where the C library is not glibc.
///
/// - The mmap threshold is fixed at 128 KiB: blocks at least that large get a mapping of their
///   own, given back to the OS when freed. glibc's threshold starts there but rises to the
///   largest block freed so far (up to 32 MiB), after which big buffers (batches, HTTP
///   buffers, SQLite's page-cache chunks) are carved from the arenas, and what is freed around
///   them stays resident. Measured on the benchmark's `outbox serve`: 0.7-0.9 MiB less
///   anonymous memory once idle, enqueue and drain rates unchanged within their noise.
/// - At most [`ARENAS_PER_CORE`] arenas a core (at least [`MIN_ARENAS`]), half of glibc's
///   default: each thread that ever ran beside the others keeps an arena, and `malloc_trim`
///   does not give back the free space at an arena's end. Measured on 2 cores (8 arenas
///   against 16), `outbox serve` with 16 senders, idle after the benchmark's load: anonymous
///   memory 3.1-3.4 against 3.4-3.8 MiB, RSS 9.7-10.0 against 10.0-10.3 MiB (8 and 5 runs);
///   enqueue and drain rates within their noise. Four arenas had cost the drain ~10 % of CPU.
///   An operator's `MALLOC_ARENA_MAX` is left as it is.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD_BYTES: libc::c_int = 128 * 1024;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = (ARENAS_PER_CORE * cores).max(MIN_ARENAS);
        let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes no pointers; glibc documents M_MMAP_THRESHOLD as settable at
        // any time (setting it turns off the dynamic adjustment) and M_ARENA_MAX as the
        // limit for arenas created from then on.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD_BYTES);
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, arenas);
            }
        }
    }
}

/// Allocator arenas a core (glibc's default is 8 on 64-bit), see [`configure_allocator`].
pub const ARENAS_PER_CORE: usize = 4;
/// Fewest allocator arenas, see [`configure_allocator`].
pub const MIN_ARENAS: usize = 8;
