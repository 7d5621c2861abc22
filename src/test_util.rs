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

/// The mandatory label of the pipe behind `handle`, as SDDL
/// (`S:(ML;;NW;;;LW)`), empty when it has none.
#[cfg(windows)]
pub fn label_sddl(handle: std::os::windows::io::BorrowedHandle<'_>) -> std::io::Result<String> {
    measure::label_sddl(handle)
}

/// The SID of the user this thread is impersonating, or `None` when it is
/// not impersonating.
#[cfg(windows)]
pub fn thread_user() -> Option<String> {
    measure::thread_user()
}

/// The impersonation level of this thread's token (0 anonymous, 1
/// identification, 2 impersonation, 3 delegation), or `None` when it is not
/// impersonating.
#[cfg(windows)]
pub fn thread_impersonation_level() -> Option<i32> {
    measure::thread_impersonation_level()
}

/// Makes this thread act as its own process at identification level
/// (`ImpersonateSelf`), as code using another impersonation API would; end
/// it with [`revert_to_self`].
#[cfg(windows)]
pub fn impersonate_self() -> std::io::Result<()> {
    measure::impersonate_self()
}

/// Ends this thread's impersonation (`RevertToSelf`).
#[cfg(windows)]
pub fn revert_to_self() {
    measure::revert_to_self()
}

/// A process running as this process's user with one group made deny-only
/// (so a rule on that group refuses it); killed when dropped.
#[cfg(windows)]
#[derive(Debug)]
pub struct Restricted(measure::Restricted);

#[cfg(windows)]
impl Restricted {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.pid
    }
}

/// Starts `command_line` (the program first, quoted) as this process's
/// user, with the group `group` (a SID string) deny-only in its token.
#[cfg(windows)]
pub fn spawn_without_group(command_line: &str, group: &str) -> std::io::Result<Restricted> {
    measure::spawn_without_group(command_line, group).map(Restricted)
}

/// The system's id of the calling thread (`GetCurrentThreadId`): under
/// Wine, thread and process ids come from one table.
#[cfg(windows)]
pub fn os_thread_id() -> u32 {
    measure::os_thread_id()
}
