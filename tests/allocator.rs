//! `memory::configure_allocator` bounds glibc's arenas. A test binary of its own: the limit
//! binds only arenas made after it is set, and other tests' threads would have made theirs.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::ffi::CString;
use std::sync::{Arc, Barrier};

use outbox::memory::{ARENAS_PER_CORE, MIN_ARENAS, configure_allocator};

/// Arenas glibc holds now, counted in what `malloc_info` prints (one `<heap nr=...>` each).
fn arenas() -> usize {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("malloc_info.xml");
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: the path and mode are NUL-terminated strings that outlive the calls; the FILE
    // is checked for NULL and closed once.
    unsafe {
        let file = libc::fopen(c_path.as_ptr(), c"w".as_ptr());
        assert!(!file.is_null(), "fopen {}", path.display());
        assert_eq!(libc::malloc_info(0, file), 0);
        libc::fclose(file);
    }
    std::fs::read_to_string(&path)
        .unwrap()
        .matches("<heap nr=")
        .count()
}

#[test]
fn threads_share_at_most_the_configured_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return; // the operator's setting is left as it is, so there is nothing to test
    }
    configure_allocator();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let limit = (ARENAS_PER_CORE * cores).max(MIN_ARENAS);
    // Twice glibc's default number of arenas, all allocating at once: without the limit each
    // would get an arena of its own until glibc's own limit (8 a core).
    let threads = 16 * cores + 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let held: Vec<Vec<u8>> = (0..64).map(|n| vec![i as u8; 64 + n]).collect();
                barrier.wait();
                held.len()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 64);
    }
    let now = arenas();
    assert!(
        now <= limit,
        "{now} arenas after {threads} threads allocated at once, limit {limit}"
    );
    assert!(now >= 2, "the threads did share out over arenas ({now})");
}
