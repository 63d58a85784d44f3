//! A SQLite VFS for the writer connection that hands each commit's WAL frames to the kernel
//! in two writes instead of two per page.
//!
//! Why: SQLite appends a frame to the WAL as two `pwrite` calls, its 24-byte header and then
//! its page. A commit of ~9 enqueued rows writes ~19 frames: 38 system calls, each also
//! touching two page-cache pages (frames are 24 bytes longer than a page). On this project's
//! machine a loop making those 38 writes took ~250 us a commit, one write of the same bytes
//! ~25 us, and the fsync after them ~180 us; every enqueue waits for its commit. With this
//! VFS the store alone (claim + record) costs ~20 % less a delivery.
//!
//! How: the VFS wraps the default (unix) VFS. Files other than a main database and its WAL
//! are the default VFS's own, untouched. A WAL file keeps contiguous appends in a buffer and
//! writes it out
//! - when a commit frame's header arrives (a frame header whose "database size" field is
//!   set, which SQLite writes for the last frame of a transaction only), and again after the
//!   page that follows it;
//! - before anything else touches the file: a read, a sync, a size query or truncation, a
//!   file control, a close, or a write that does not continue the buffer;
//! - when it would pass 128 KiB, the most the unix VFS writes at once;
//! - when the database file's shared-memory barrier runs, which SQLite calls before it makes
//!   new frames visible to other connections (a safety net: by then nothing is buffered).
//!
//! So the bytes SQLite wrote reach the kernel, in the order it wrote them, before the commit
//! returns, before any sync, and before any other connection may read them: what a crash can
//! lose is what it could lose without the buffer. Only the writer connection uses this VFS.

use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use rusqlite::ffi;

/// The name this VFS is registered under.
const NAME_C: &CStr = c"outbox-wal-batch";
const NAME: &str = match NAME_C.to_str() {
    Ok(name) => name,
    Err(_) => panic!("the VFS name is ASCII"),
};

/// Size of a WAL frame header (SQLite's file format).
const FRAME_HEADER: usize = 24;
/// Most bytes written out at once: the unix VFS takes at most 128 KiB less one byte a write
/// (`seekAndWriteFd` masks the length with 0x1ffff). A commit of ~19 frames is ~78 KiB.
const MAX_BUFFER: usize = 0x1ffff;

/// The default VFS, which does the real work.
static REAL_VFS: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Open main database files, by the address of their name: SQLite names a WAL file with a
/// pointer into the same allocation as its database's name, from which
/// `sqlite3_filename_database` recovers the database name's address.
static DATABASES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Registers the VFS (once) and returns its name, or `None` when SQLite has no default VFS
/// to wrap or refused the registration; callers then open connections with the default VFS.
pub(crate) fn name() -> Option<&'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    // SAFETY: `register` only reads the default VFS and registers a leaked, never-freed copy.
    REGISTERED
        .get_or_init(|| unsafe { register() })
        .then_some(NAME)
}

unsafe fn register() -> bool {
    // SAFETY: sqlite3_vfs_find initialises SQLite if needed and returns a static VFS or null.
    let real = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    if real.is_null() {
        return false;
    }
    // SAFETY: `real` points to a registered VFS, which lives until the process ends.
    let mut vfs = unsafe { ptr::read(real) };
    let Ok(size) = c_int::try_from(real_file_offset() + vfs.szOsFile as usize) else {
        return false;
    };
    vfs.szOsFile = size;
    vfs.zName = NAME_C.as_ptr();
    vfs.pNext = ptr::null_mut();
    vfs.xOpen = Some(open);
    REAL_VFS.store(real, Ordering::SeqCst);
    // SQLite keeps the pointer for the process's life.
    let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
    // SAFETY: `vfs` is valid for 'static and filled from the default VFS.
    unsafe { ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK }
}

/// Frees the WAL buffer of `conn` (a connection opened with this VFS), so an idle service
/// does not hold it; the next commit allocates it again. The caller must hold `conn` for
/// itself, as the store's writer lock does. Does nothing for a connection of another VFS.
pub(crate) fn release_buffer(conn: &rusqlite::Connection) {
    // SAFETY: the caller holds `conn`, so no SQLite call uses the buffer meanwhile.
    if let Some(wal) = unsafe { wal_buffer(conn).as_mut() }
        && wal.bytes.is_empty()
    {
        wal.bytes = Vec::new();
    }
}

/// The buffer of `conn`'s WAL file, if `conn` was opened with this VFS and its WAL is open
/// (null otherwise). Valid while the WAL stays open; SQLite uses it during any call on `conn`.
///
/// # Safety
/// `conn` must be open.
unsafe fn wal_buffer(conn: &rusqlite::Connection) -> *mut WalBuffer {
    let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
    // SAFETY: FILE_POINTER writes the main database's sqlite3_file (or nothing) into `file`;
    // it is a ShimFile if its methods are ours, and stays open while `conn` is borrowed.
    unsafe {
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast::<c_void>(),
        );
        if rc != ffi::SQLITE_OK || file.is_null() || !ptr::eq((*file).pMethods, &METHODS) {
            return ptr::null_mut();
        }
        let db = &*file.cast::<ShimFile>();
        match db.peer.as_mut().and_then(|wal| wal.wal.as_deref_mut()) {
            Some(buffer) => buffer,
            None => ptr::null_mut(),
        }
    }
}

/// What an open file of this VFS is.
#[repr(C)]
struct ShimFile {
    /// Must come first: SQLite sees a `sqlite3_file` whose methods are [`METHODS`].
    base: ffi::sqlite3_file,
    /// The default VFS's file, placed after this struct in the same allocation.
    real: *mut ffi::sqlite3_file,
    /// For a WAL file, its buffer; `None` for a database file.
    wal: Option<Box<WalBuffer>>,
    /// For a database file, its open WAL file; for a WAL file, its database file. Null when
    /// there is none (a WAL whose database was not found writes straight through).
    peer: *mut ShimFile,
    /// For a database file, the address of its name (the key in [`DATABASES`]).
    name_key: usize,
}

#[derive(Default)]
struct WalBuffer {
    bytes: Vec<u8>,
    /// File offset of `bytes[0]`.
    start: i64,
    /// The last write was a commit frame's header: write out after its page too.
    commit_page_next: bool,
    /// Write-outs so far (for tests).
    write_outs: u64,
    /// A write-out failed where no error could be returned (the barrier): the next call that
    /// can return one does, so the transaction fails instead of going on without its frames.
    deferred_error: c_int,
}

/// Where the real file starts in a file allocation: after [`ShimFile`], 8-byte aligned.
const fn real_file_offset() -> usize {
    std::mem::size_of::<ShimFile>().next_multiple_of(8)
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = REAL_VFS.load(Ordering::SeqCst);
    // SAFETY: set before this VFS was registered; a registered VFS is never freed.
    let Some(real_open) = (unsafe { (*real_vfs).xOpen }) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let is_db = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
    let is_wal = flags & ffi::SQLITE_OPEN_WAL != 0;
    if name.is_null() || !(is_db || is_wal) {
        // SAFETY: `file` has room for the real file (szOsFile is larger than the real one's).
        return unsafe { real_open(real_vfs, name, file, flags, out_flags) };
    }
    // SAFETY: `file` is szOsFile bytes, 8-byte aligned (SQLite's allocations are).
    let real = unsafe { file.cast::<u8>().add(real_file_offset()) }.cast::<ffi::sqlite3_file>();
    let rc = unsafe { real_open(real_vfs, name, real, flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        // SQLite closes a failed open's file only if its methods are set: close the real one
        // here (if it set its methods) and leave ours unset.
        unsafe {
            if let Some(close) = (*real).pMethods.as_ref().and_then(|m| m.xClose) {
                close(real);
            }
            (*file).pMethods = ptr::null();
        }
        return rc;
    }
    let shim = file.cast::<ShimFile>();
    let mut state = ShimFile {
        base: ffi::sqlite3_file { pMethods: &METHODS },
        real,
        wal: None,
        peer: ptr::null_mut(),
        name_key: 0,
    };
    let mut databases = DATABASES.lock().unwrap_or_else(PoisonError::into_inner);
    if is_db {
        state.name_key = name as usize;
        databases.push((state.name_key, shim as usize));
    } else {
        // SAFETY: SQLite passes a WAL file the name it derived from its database's name.
        let db_name = unsafe { ffi::sqlite3_filename_database(name) } as usize;
        state.wal = Some(Box::default());
        if let Some(&(_, db)) = databases.iter().find(|(key, _)| *key == db_name) {
            state.peer = db as *mut ShimFile;
            // SAFETY: an entry of DATABASES is an open database file of this VFS.
            unsafe { (*state.peer).peer = shim };
        }
    }
    // SAFETY: `shim` is the start of the allocation, large enough and aligned for ShimFile.
    unsafe { ptr::write(shim, state) };
    ffi::SQLITE_OK
}

/// The file as ours. SQLite calls the methods below only on files that [`open`] set up.
unsafe fn shim<'a>(file: *mut ffi::sqlite3_file) -> &'a mut ShimFile {
    // SAFETY: see above; SQLite uses a file from one thread at a time.
    unsafe { &mut *file.cast::<ShimFile>() }
}

/// The real file's methods.
unsafe fn real_methods<'a>(shim: &ShimFile) -> &'a ffi::sqlite3_io_methods {
    // SAFETY: an open real file has its methods set.
    unsafe { &*(*shim.real).pMethods }
}

/// Writes out a WAL file's buffer. `SQLITE_OK` for any other file or an empty buffer.
unsafe fn write_out(shim: &mut ShimFile) -> c_int {
    let real = shim.real;
    // SAFETY: as `real_methods`.
    let Some(write) = (unsafe { real_methods(shim) }).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let Some(wal) = shim.wal.as_mut() else {
        return ffi::SQLITE_OK;
    };
    if wal.deferred_error != ffi::SQLITE_OK {
        return std::mem::replace(&mut wal.deferred_error, ffi::SQLITE_OK);
    }
    if wal.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    // MAX_BUFFER keeps the length well within c_int.
    let rc = unsafe {
        write(
            real,
            wal.bytes.as_ptr().cast::<c_void>(),
            wal.bytes.len() as c_int,
            wal.start,
        )
    };
    wal.bytes.clear();
    wal.write_outs += 1;
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let shim = unsafe { shim(file) };
    let Some(real_write) = (unsafe { real_methods(shim) }).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    if shim.wal.is_none() || shim.peer.is_null() || amount <= 0 {
        return unsafe { real_write(shim.real, data, amount, offset) };
    }
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), amount as usize) };
    if bytes.len() > MAX_BUFFER {
        let rc = unsafe { write_out(shim) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        return unsafe { real_write(shim.real, data, amount, offset) };
    }
    let continues = shim.wal.as_ref().is_some_and(|w| {
        w.bytes.is_empty()
            || (offset == w.start + w.bytes.len() as i64
                && w.bytes.len() + bytes.len() <= MAX_BUFFER)
    });
    if !continues {
        let rc = unsafe { write_out(shim) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let Some(wal) = shim.wal.as_mut() else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    if wal.deferred_error != ffi::SQLITE_OK {
        return std::mem::replace(&mut wal.deferred_error, ffi::SQLITE_OK);
    }
    if wal.bytes.is_empty() {
        wal.start = offset;
        // Exactly once, so the buffer never grows past what one write takes.
        wal.bytes.reserve_exact(MAX_BUFFER);
    }
    wal.bytes.extend_from_slice(bytes);
    // Bytes 4..8 of a frame header: the database size after a commit, zero otherwise.
    let commit_header = bytes.len() == FRAME_HEADER && bytes[4..8] != [0; 4];
    let page_after_commit = std::mem::replace(&mut wal.commit_page_next, commit_header);
    if commit_header || page_after_commit {
        return unsafe { write_out(shim) };
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let shim = unsafe { shim(file) };
    let flushed = unsafe { write_out(shim) };
    {
        let mut databases = DATABASES.lock().unwrap_or_else(PoisonError::into_inner);
        if shim.wal.is_none() {
            databases.retain(|(key, _)| *key != shim.name_key);
        }
        if !shim.peer.is_null() {
            // SAFETY: a peer unlinks itself here before it is freed, so a set peer is open.
            unsafe { (*shim.peer).peer = ptr::null_mut() };
        }
    }
    let real = shim.real;
    let closed = match (unsafe { real_methods(shim) }).xClose {
        Some(close) => unsafe { close(real) },
        None => ffi::SQLITE_OK,
    };
    // SAFETY: SQLite calls no method of the file after xClose; drop our fields in place.
    unsafe { ptr::drop_in_place(shim as *mut ShimFile) };
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

/// Defines a method that calls the real file's, or answers `$missing` if it has none. With
/// `write out first`, a WAL file's buffer is written out before: nothing SQLite wrote may lag
/// behind what it then reads, syncs, measures, truncates or asks of the file.
macro_rules! forward {
    ($name:ident => $method:ident($($arg:ident: $ty:ty),*), or $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            let shim = unsafe { shim(file) };
            match (unsafe { real_methods(shim) }).$method {
                Some(real) => unsafe { real(shim.real, $($arg),*) },
                None => $missing,
            }
        }
    };
    (write out first, $name:ident => $method:ident($($arg:ident: $ty:ty),*), or $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            let shim = unsafe { shim(file) };
            let rc = unsafe { write_out(shim) };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            match (unsafe { real_methods(shim) }).$method {
                Some(real) => unsafe { real(shim.real, $($arg),*) },
                None => $missing,
            }
        }
    };
}

forward!(write out first, read => xRead(data: *mut c_void, amount: c_int, offset: i64),
    or ffi::SQLITE_IOERR_READ);
forward!(write out first, truncate => xTruncate(size: i64), or ffi::SQLITE_IOERR_TRUNCATE);
forward!(write out first, sync => xSync(flags: c_int), or ffi::SQLITE_IOERR_FSYNC);
forward!(write out first, file_size => xFileSize(size: *mut i64), or ffi::SQLITE_IOERR_FSTAT);
forward!(write out first, file_control => xFileControl(op: c_int, arg: *mut c_void),
    or ffi::SQLITE_NOTFOUND);
forward!(lock => xLock(level: c_int), or ffi::SQLITE_IOERR_LOCK);
forward!(unlock => xUnlock(level: c_int), or ffi::SQLITE_IOERR_UNLOCK);
forward!(check_reserved_lock => xCheckReservedLock(out: *mut c_int),
    or ffi::SQLITE_IOERR_CHECKRESERVEDLOCK);
forward!(sector_size => xSectorSize(), or 4096);
forward!(device_characteristics => xDeviceCharacteristics(), or 0);
forward!(shm_map => xShmMap(page: c_int, page_size: c_int, extend: c_int, out: *mut *mut c_void),
    or ffi::SQLITE_IOERR_SHMMAP);
forward!(shm_lock => xShmLock(offset: c_int, n: c_int, flags: c_int), or ffi::SQLITE_IOERR_SHMLOCK);
forward!(shm_unmap => xShmUnmap(delete: c_int), or ffi::SQLITE_OK);
forward!(unfetch => xUnfetch(offset: i64, page: *mut c_void), or ffi::SQLITE_OK);

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    let shim = unsafe { shim(file) };
    if !shim.peer.is_null() {
        // SAFETY: a set peer is an open file of the same connection (see `close`).
        let wal = unsafe { &mut *shim.peer };
        let rc = unsafe { write_out(wal) };
        if rc != ffi::SQLITE_OK
            && let Some(w) = wal.wal.as_mut()
        {
            w.deferred_error = rc;
        }
    }
    if let Some(barrier) = (unsafe { real_methods(shim) }).xShmBarrier {
        unsafe { barrier(shim.real) };
    }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let shim = unsafe { shim(file) };
    match (unsafe { real_methods(shim) }).xFetch {
        Some(f) => unsafe { f(shim.real, offset, amount, out) },
        None => {
            // SAFETY: SQLite passes a valid out pointer; null means "read it instead".
            unsafe { *out = ptr::null_mut() };
            ffi::SQLITE_OK
        }
    }
}

/// The methods of every database and WAL file of this VFS (version 3, as the unix VFS's).
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags, params};

    fn writer(path: &std::path::Path, synchronous: &str) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            name().expect("the VFS registers"),
        )
        .unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
             PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"
        ))
        .unwrap();
        conn
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Copies the database and its WAL as they are on disk now (the writer still open, nothing
    /// checkpointed) and opens the copy: SQLite rebuilds the copy's WAL index from the WAL
    /// file alone, so it sees exactly the commits whose frames reached the file.
    fn recovered_count(path: &std::path::Path, dir: &std::path::Path, n: usize) -> i64 {
        let copy = dir.join(format!("copy{n}.db"));
        std::fs::copy(path, &copy).unwrap();
        let wal = |p: &std::path::Path| format!("{}-wal", p.display());
        std::fs::copy(wal(path), wal(&copy)).unwrap();
        let conn = Connection::open(&copy).unwrap();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        count(&conn)
    }

    #[test]
    fn every_commit_reaches_the_wal_file_before_it_returns() {
        for synchronous in ["FULL", "NORMAL"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let conn = writer(&path, synchronous);
            let reader = Connection::open(&path).unwrap();
            let body = "x".repeat(1000);
            for n in 1..=20_i64 {
                let tx = conn.unchecked_transaction().unwrap();
                for _ in 0..n {
                    tx.execute("INSERT INTO t (body) VALUES (?1)", [&body])
                        .unwrap();
                }
                tx.commit().unwrap();
                let total = n * (n + 1) / 2;
                assert_eq!(count(&reader), total, "{synchronous}: another connection");
                if n % 5 == 0 {
                    let copied = recovered_count(&path, dir.path(), n as usize);
                    assert_eq!(
                        copied, total,
                        "{synchronous}: the WAL file after commit {n}"
                    );
                }
            }
        }
    }

    /// The WAL buffer of `conn` (opened with this VFS) as this VFS sees it.
    fn wal_of(conn: &Connection) -> &WalBuffer {
        // SAFETY: the tests read the buffer only between statements.
        unsafe { wal_buffer(conn).as_ref() }.expect("the WAL file found its database")
    }

    #[test]
    fn a_commit_goes_out_in_two_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = writer(&path, "FULL");
        let body = "x".repeat(1000);
        conn.execute("INSERT INTO t (body) VALUES (?1)", [&body])
            .unwrap();
        let before = wal_of(&conn).write_outs;
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..10 {
            tx.execute("INSERT INTO t (body) VALUES (?1)", [&body])
                .unwrap();
        }
        tx.commit().unwrap();
        // Ten 1 KiB rows: several pages, two writes (up to the commit frame's header, and
        // its page) where SQLite alone makes two per page.
        assert_eq!(wal_of(&conn).write_outs - before, 2);
        assert!(wal_of(&conn).bytes.capacity() >= MAX_BUFFER);
        release_buffer(&conn);
        assert_eq!(wal_of(&conn).bytes.capacity(), 0, "released");
        conn.execute("INSERT INTO t (body) VALUES (?1)", [&body])
            .unwrap();
        assert_eq!(wal_of(&conn).write_outs - before, 4, "and buffered again");
    }

    #[test]
    fn a_transaction_larger_than_the_cache_commits_whole() {
        // A tiny page cache makes SQLite write frames to the WAL before the commit, then
        // rewrite some of them in place and fix up their checksums at the commit: the
        // buffer's out-of-order and read-back paths.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = writer(&path, "FULL");
        conn.execute_batch("PRAGMA cache_size = 10").unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..2_000_i64 {
            tx.execute(
                "INSERT INTO t (id, body) VALUES (?1, ?2)",
                params![i, "y".repeat(500)],
            )
            .unwrap();
        }
        // Reads pages back while the last ones written out for room may still be buffered.
        let full: i64 = tx
            .query_row(
                "SELECT count(*) FROM t WHERE body = ?1",
                ["y".repeat(500)],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(full, 2_000);
        tx.execute("UPDATE t SET body = 'z' WHERE id % 7 = 0", [])
            .unwrap();
        tx.commit().unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        tx.execute("INSERT INTO t (id, body) VALUES (5000, 'rolled back')", [])
            .unwrap();
        tx.rollback().unwrap();
        conn.execute("UPDATE t SET body = 'after' WHERE id = 1", [])
            .unwrap();

        assert_eq!(recovered_count(&path, dir.path(), 0), 2_000);
        let reader = Connection::open(&path).unwrap();
        let (z, after): (i64, String) = reader
            .query_row(
                "SELECT (SELECT count(*) FROM t WHERE body = 'z'), \
                 (SELECT body FROM t WHERE id = 1)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((z, after.as_str()), (286, "after"));
        drop(reader);
        drop(conn);
        // Closed: the last connection checkpointed the WAL into the database file.
        let reopened = Connection::open(&path).unwrap();
        assert_eq!(count(&reopened), 2_000);
    }
}
