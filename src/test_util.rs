//! Process measurements for pipeserve's own tests and benchmarks, behind
//! the `test-util` feature (as tokio keeps its test utilities): handle and
//! memory counts, a child's CPU time, a pipe's DACL. Not part of the
//! library, and not a stable API. The platform code is in `sys`.

use crate::sys::measure;

/// Whether this process runs under Wine, which does not enforce some pipe
/// semantics (`first_pipe_instance`).
pub fn running_under_wine() -> bool {
    measure::running_under_wine()
}

/// Open file descriptors (Unix) or handles (Windows) of this process; `None`
/// where the system does not say.
pub fn open_handles() -> Option<u64> {
    measure::open_handles()
}

/// The resident memory (working set on Windows) of this process, in bytes.
pub fn resident_memory() -> Option<u64> {
    measure::resident_memory()
}

/// CPU time and memory of a child process (for benchmarks that run the
/// server in a child).
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// User + kernel CPU time.
    pub cpu: std::time::Duration,
    /// Resident memory (working set) now, in bytes.
    pub rss: u64,
    /// Peak resident memory (working set), in bytes.
    pub peak_rss: u64,
    /// Open file descriptors (Unix) or handles (Windows), where the system
    /// says.
    pub handles: Option<u64>,
}

/// What `child` has used so far; `None` where the system does not say.
pub fn child_usage(child: &std::process::Child) -> Option<Usage> {
    measure::child_usage(child).map(|(cpu, rss, peak_rss)| Usage {
        cpu,
        rss,
        peak_rss,
        handles: measure::child_handles(child),
    })
}

/// The DACL of the pipe behind `handle`, as SDDL.
#[cfg(windows)]
pub fn dacl_sddl(handle: std::os::windows::io::BorrowedHandle<'_>) -> std::io::Result<String> {
    measure::dacl_sddl(handle)
}

/// The SID of the user this thread is impersonating, or `None` when it is
/// not impersonating.
#[cfg(windows)]
pub fn thread_user() -> Option<String> {
    measure::thread_user()
}
