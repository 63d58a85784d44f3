//! Scheduling priority for the thread that every enqueue waits on.
//!
//! An enqueue is answered only after the enqueue writer's commit, and that thread spends most
//! of a commit asleep in fsync. When the disk answers, the cores are often busy with the API's
//! connection threads and the clients, and the writer waits for its turn to run on, while
//! every caller waits for it. A lower nice value gives it more weight with the kernel's
//! scheduler, so it runs as soon as it wakes. It uses little CPU (it mostly sleeps in fsync),
//! so the other threads lose little. Measured on the benchmark's enqueue section, 16 clients
//! on SQLite `full`: 8.3-8.9k/s at the default priority, 10.2-11.6k/s at nice -10.
//!
//! Lowering a nice value needs CAP_SYS_NICE or a resource limit that allows it (systemd:
//! `LimitNICE=-10`, as `contrib/outbox.service` sets); without either the thread keeps the
//! default priority, and works as before.

/// The nice value the enqueue writer asks for: 0 is the default, -20 the highest priority.
pub const WRITER_NICE: i32 = -10;

/// Sets the calling thread's (only this thread's) nice value to `nice`. Returns whether the
/// kernel allowed it; where it did not, nothing changed.
pub fn set_current_thread_nice(nice: i32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::{c_int, c_uint};
        /// `PRIO_PROCESS` (sys/resource.h): on Linux, with a thread id, that thread alone.
        const PRIO_PROCESS: c_int = 0;
        unsafe extern "C" {
            fn gettid() -> c_int;
            fn setpriority(which: c_int, who: c_uint, prio: c_int) -> c_int;
        }
        // SAFETY: neither call takes a pointer; gettid cannot fail, and setpriority only
        // changes the scheduling weight of the thread named (this one), or fails with EPERM
        // or EACCES and changes nothing.
        unsafe { setpriority(PRIO_PROCESS, gettid() as c_uint, nice) == 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = nice;
        false
    }
}

/// Reading threads' nice values back from the kernel, for tests.
#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
pub(crate) mod probe {
    /// The nice value of thread `tid` of this process.
    pub fn nice_of(tid: &str) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // The fields after the ")" that ends the thread's name; nice is the 19th of the line.
        let after = stat.rsplit_once(')').unwrap().1;
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    }

    /// The calling thread's id.
    pub fn current_tid() -> String {
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        link.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The ids of this process's threads named `name` (the kernel keeps 15 bytes of a name).
    pub fn threads_named(name: &str) -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|entry| {
                let tid = entry.ok()?.file_name().to_string_lossy().into_owned();
                let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
                (comm.trim_end() == name).then_some(tid)
            })
            .collect()
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::probe::{current_tid, nice_of};
    use super::*;

    /// Raising a nice value (lowering the priority) needs no privilege, so this runs anywhere.
    #[test]
    fn sets_the_nice_value_of_the_calling_thread_only() {
        let main_tid = current_tid();
        let main_nice = nice_of(&main_tid);
        let target = (main_nice + 1).min(19);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send((set_current_thread_nice(target), current_tid()))
                .unwrap();
            done_rx.recv().unwrap();
        });
        let (set, tid) = rx.recv().unwrap();
        assert!(set, "raising a thread's nice value needs no privilege");
        assert_eq!(nice_of(&tid), target);
        assert_eq!(nice_of(&main_tid), main_nice, "other threads keep theirs");
        done_tx.send(()).unwrap();
        thread.join().unwrap();
    }
}
