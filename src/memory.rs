//! Giving freed heap and stack memory back to the operating system.
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

/// Gives back the pages of the calling thread's stack below the current frame. A sender thread
/// that has made requests keeps ~90 KiB of its stack resident while it waits, and a service
/// runs 16 of them by default (measured: 1.5 MiB of an idle service's 5.2 MiB of anonymous
/// memory). Call it from a shallow frame, while the thread waits: the pages come back zeroed
/// when the thread next runs that deep. A no-op where the C library is not glibc.
pub fn release_unused_stack() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Kept below the current frame: this function's own callees and a signal handler that
        /// may run on this stack meanwhile use it.
        const MARGIN: usize = 16 * 1024;
        // SAFETY: sysconf takes no pointers.
        let page = match usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) {
            Ok(page) if page.is_power_of_two() => page,
            _ => return,
        };
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: `attr` is initialised by pthread_getattr_np before it is read and destroyed
        // once; the pointers passed are to live locals.
        let found = unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            let got = libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0;
            let found = got && libc::pthread_attr_getstack(&attr, &mut low, &mut size) == 0;
            if got {
                libc::pthread_attr_destroy(&mut attr);
            }
            found
        };
        if !found {
            return;
        }
        // The stack grows down: from its low end (above the guard page, which glibc leaves out
        // of the size it reports) up to here less the margin, nothing is in use.
        let here = std::ptr::addr_of!(size) as usize;
        let start = (low as usize).next_multiple_of(page);
        let end = here.saturating_sub(MARGIN) / page * page;
        if end <= start || here > low as usize + size {
            return;
        }
        // SAFETY: [start, end) lies within this thread's own stack and below every live frame
        // of it, so no data there is in use; MADV_DONTNEED on private anonymous memory only
        // drops the pages, which read as zeros when next touched.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Fixes the allocator's mmap threshold at 128 KiB: blocks at least that large get a mapping
/// of their own, given back to the OS when freed. glibc's threshold starts there but rises to
/// the largest block freed so far (up to 32 MiB), after which big buffers (batches, HTTP
/// buffers, SQLite's page-cache chunks) are carved from the arenas, and what is freed around
/// them stays resident. Measured on the benchmark's `outbox serve`: 0.7-0.9 MiB less
/// anonymous memory once idle, enqueue and drain rates unchanged within their noise. Call it
/// before starting threads. A no-op where the C library is not glibc.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD_BYTES: libc::c_int = 128 * 1024;
        // SAFETY: mallopt takes no pointers; glibc documents M_MMAP_THRESHOLD as settable at
        // any time, and setting it turns off the dynamic adjustment.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD_BYTES);
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// Resident KiB of the mapping that holds `addr` (from /proc/self/smaps).
    fn resident_kib_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                inside = (start..end).contains(&addr);
            } else if inside && let Some(kib) = line.strip_prefix("Rss:") {
                return kib.trim().trim_end_matches(" kB").parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// Touches about `kib` KiB of stack below the caller's frame.
    #[inline(never)]
    fn run_deep(kib: usize) -> u8 {
        let mut frame = [0u8; 16 * 1024];
        black_box(&mut frame)[0] = 1;
        let below = if kib > 16 { run_deep(kib - 16) } else { 0 };
        black_box(&frame)[0] + below
    }

    #[test]
    fn releasing_the_unused_stack_drops_what_a_deep_call_touched() {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let marker = 0u8;
                let here = black_box(&marker) as *const u8 as usize;
                black_box(run_deep(1024));
                let before = resident_kib_at(here);
                release_unused_stack();
                let after = resident_kib_at(here);
                assert!(before >= 1024, "the deep call left {before} KiB resident");
                assert!(
                    after + 900 <= before,
                    "{before} KiB resident before the release, {after} KiB after"
                );
                // The released pages come back, zeroed, when the thread runs deep again.
                assert_eq!(black_box(run_deep(1024)), 64);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
