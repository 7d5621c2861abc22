//! Process measurements for tests and benchmarks (the `test-util`
//! feature), not the library.

use std::{
    io,
    mem::{size_of, zeroed},
    os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle, RawHandle},
    ptr,
};

use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Win32::{
    Foundation::{LocalFree, FILETIME, HANDLE},
    Security::{
        Authorization::{
            ConvertSecurityDescriptorToStringSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
            SE_KERNEL_OBJECT,
        },
        CreateRestrictedToken, GetAce, GetTokenInformation, ImpersonateSelf, RevertToSelf,
        SecurityIdentification, TokenImpersonationLevel, ACL, DACL_SECURITY_INFORMATION,
        LABEL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, SID_AND_ATTRIBUTES,
        SYSTEM_MANDATORY_LABEL_ACE, TOKEN_ASSIGN_PRIMARY, TOKEN_DUPLICATE, TOKEN_QUERY,
    },
    System::{
        ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS},
        Threading::{
            CreateProcessAsUserW, GetCurrentProcess, GetCurrentThreadId, GetProcessHandleCount,
            GetProcessTimes, TerminateProcess, PROCESS_INFORMATION, STARTUPINFOW,
        },
    },
};

use super::{
    identity::{open_token, sid_string, token_user, Sid},
    impersonate::thread_token,
    security::SecurityDescriptor,
};

/// The user of this thread's impersonation token, if it has one
/// (`OpenThreadToken`, as self); `None` when the thread is not
/// impersonating.
pub(crate) fn thread_user() -> Option<String> {
    let token = thread_token(TOKEN_QUERY).ok()??;
    token_user(&token).ok().map(|user| user.sid)
}

/// The impersonation level of this thread's token (0 anonymous, 1
/// identification, 2 impersonation, 3 delegation); `None` when the thread is
/// not impersonating.
pub(crate) fn thread_impersonation_level() -> Option<i32> {
    let token = thread_token(TOKEN_QUERY).ok()??;
    let (mut level, mut len) = (0i32, 0u32);
    // Safety: `level` is a valid place for a SECURITY_IMPERSONATION_LEVEL
    // (an i32), its size passed; the token is open for the call.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            TokenImpersonationLevel,
            (&raw mut level).cast(),
            size_of::<i32>() as u32,
            &mut len,
        )
    };
    (ok != 0).then_some(level)
}

/// The system's id of the calling thread (`GetCurrentThreadId`).
pub(crate) fn os_thread_id() -> u32 {
    // Safety: plain call.
    unsafe { GetCurrentThreadId() }
}

/// Makes this thread act as its own process at identification level
/// (`ImpersonateSelf`), as code using another impersonation API would.
pub(crate) fn impersonate_self() -> io::Result<()> {
    // Safety: plain call on the current thread.
    if unsafe { ImpersonateSelf(SecurityIdentification) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends this thread's impersonation (`RevertToSelf`).
pub(crate) fn revert_to_self() {
    // Safety: plain call on the current thread.
    unsafe { RevertToSelf() };
}

/// A process started with a token of this process's in which one group is
/// for deny only: the same user, with less.
#[derive(Debug)]
pub(crate) struct Restricted {
    pub(crate) pid: u32,
    process: OwnedHandle,
}

impl Drop for Restricted {
    fn drop(&mut self) {
        // Safety: the handle is ours and open.
        unsafe { TerminateProcess(self.process.as_raw_handle() as HANDLE, 1) };
    }
}

/// Starts `command_line` (its program first, quoted as Windows wants)
/// with this process's token, `group` (a SID string) made deny-only
/// (`CreateRestrictedToken`, `CreateProcessAsUserW`); the environment is
/// this process's.
pub(crate) fn spawn_without_group(command_line: &str, group: &str) -> io::Result<Restricted> {
    let group = Sid::parse(group)?;
    // Safety: the pseudo handle of this process needs no closing.
    let own = open_token(
        unsafe { GetCurrentProcess() },
        TOKEN_QUERY | TOKEN_DUPLICATE | TOKEN_ASSIGN_PRIMARY,
    )?;
    let disable = SID_AND_ATTRIBUTES {
        Sid: group.as_psid(),
        Attributes: 0,
    };
    let mut restricted: HANDLE = ptr::null_mut();
    // Safety: `own` is open with TOKEN_DUPLICATE; one SID to disable, valid
    // for the call (owned by `group`); no privileges or restricting SIDs.
    if unsafe {
        CreateRestrictedToken(
            own.as_raw_handle() as HANDLE,
            0,
            1,
            &disable,
            0,
            ptr::null(),
            0,
            ptr::null(),
            &mut restricted,
        )
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    // Safety: just made for us.
    let restricted = unsafe { OwnedHandle::from_raw_handle(restricted as RawHandle) };
    let mut command_line: Vec<u16> = command_line.encode_utf16().chain(Some(0)).collect();
    // Safety: zeroed STARTUPINFOW with its size set is the default; the
    // PROCESS_INFORMATION is written by the call.
    let (startup, mut info) = unsafe {
        let mut startup: STARTUPINFOW = zeroed();
        startup.cb = size_of::<STARTUPINFOW>() as u32;
        (startup, zeroed::<PROCESS_INFORMATION>())
    };
    // Safety: the token is open for the call; the command line is a
    // writable, NUL-terminated buffer that outlives it; null environment and
    // directory are this process's.
    if unsafe {
        CreateProcessAsUserW(
            restricted.as_raw_handle() as HANDLE,
            ptr::null(),
            command_line.as_mut_ptr(),
            ptr::null(),
            ptr::null(),
            0,
            0,
            ptr::null(),
            ptr::null(),
            &startup,
            &mut info,
        )
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    // Safety: both handles were just opened for us; the thread's is not
    // needed.
    let process = unsafe {
        drop(OwnedHandle::from_raw_handle(info.hThread as RawHandle));
        OwnedHandle::from_raw_handle(info.hProcess as RawHandle)
    };
    Ok(Restricted {
        pid: info.dwProcessId,
        process,
    })
}

/// Whether this process runs under Wine.
pub(crate) fn running_under_wine() -> bool {
    super::identity::running_under_wine()
}

/// The number of handles this process has open.
///
/// `GetProcessHandleCount` where it works; Wine 8 answers 0 there, so then
/// the handles of this process are counted in the system's handle table
/// (`NtQuerySystemInformation(SystemHandleInformation)`), which Wine keeps.
pub(crate) fn open_handles() -> Option<u64> {
    process_handle_count().map(u64::from)
}

/// The number of handles `child` has open, the same way.
pub(crate) fn child_handles(child: &std::process::Child) -> Option<u64> {
    let mut count = 0u32;
    // Safety: the handle belongs to `child`, borrowed for the call, and
    // `count` is a valid place for the result.
    let ok = unsafe { GetProcessHandleCount(child.as_raw_handle() as HANDLE, &mut count) };
    if ok != 0 && count > 0 {
        return Some(u64::from(count));
    }
    count_system_handles(child.id()).map(u64::from)
}

fn process_handle_count() -> Option<u32> {
    let mut count = 0u32;
    // Safety: the pseudo handle of the current process needs no closing, and
    // `count` is a valid place for the result.
    let ok = unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut count) };
    if ok != 0 && count > 0 {
        return Some(count);
    }
    count_system_handles(std::process::id())
}

/// The handles of process `pid` in the system's handle table.
fn count_system_handles(pid: u32) -> Option<u32> {
    const SYSTEM_HANDLE_INFORMATION: i32 = 16;
    const STATUS_INFO_LENGTH_MISMATCH: i32 = 0xC000_0004_u32 as i32;
    // SYSTEM_HANDLE_INFORMATION: a u32 count, then (from offset 8) entries of
    // 24 bytes whose first field is the owner's process id, as a u16.
    const HEADER: usize = 8;
    const ENTRY: usize = 24;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let mut needed = 0u32;
        // Safety: `buf` is writable for its whole length, which is passed.
        let status = unsafe {
            NtQuerySystemInformation(
                SYSTEM_HANDLE_INFORMATION,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
                &mut needed,
            )
        };
        match status {
            0 => break,
            STATUS_INFO_LENGTH_MISMATCH if buf.len() < 1 << 26 => {
                let len = (buf.len() * 2).max(needed as usize + (1 << 12));
                buf.resize(len, 0);
            }
            _ => return None,
        }
    }
    let entries = u32::from_le_bytes(buf[..4].try_into().ok()?) as usize;
    let owner = pid as u16;
    let count = (0..entries)
        .filter_map(|i| buf.get(HEADER + i * ENTRY..HEADER + i * ENTRY + 2))
        .filter(|pid| u16::from_le_bytes([pid[0], pid[1]]) == owner)
        .count();
    (count > 0).then_some(count as u32)
}

/// The mandatory label of the object behind `handle`, written as SDDL
/// (`S:(ML;;NW;;;LW)`) from the label ACE itself (Wine's SDDL writer knows
/// no labels); empty without one.
pub(crate) fn label_sddl(handle: BorrowedHandle<'_>) -> io::Result<String> {
    const SYSTEM_MANDATORY_LABEL_ACE_TYPE: u8 = 0x11;
    let (mut sacl, mut sd): (*mut ACL, PSECURITY_DESCRIPTOR) = (ptr::null_mut(), ptr::null_mut());
    // Safety: the handle is borrowed, so open for the call; the out pointers
    // are valid, and on success `sd` is a LocalAlloc'ed descriptor we own,
    // which `sacl` points into (or null).
    let err = unsafe {
        GetSecurityInfo(
            handle.as_raw_handle() as HANDLE,
            SE_KERNEL_OBJECT,
            LABEL_SECURITY_INFORMATION,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            &mut sacl,
            &mut sd,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    let _sd = SecurityDescriptor(sd);
    if sacl.is_null() {
        return Ok(String::new());
    }
    let mut labels = String::new();
    // Safety: `sacl` is a valid ACL inside `_sd`, alive for the loop; each
    // ACE GetAce returns lies within it, and one of type
    // SYSTEM_MANDATORY_LABEL_ACE_TYPE is a SYSTEM_MANDATORY_LABEL_ACE whose
    // SID starts at `SidStart`; ACEs are 4-aligned, as that struct is.
    unsafe {
        for i in 0..u32::from((*sacl).AceCount) {
            let mut ace: *mut core::ffi::c_void = ptr::null_mut();
            if GetAce(sacl, i, &mut ace) == 0 {
                return Err(io::Error::last_os_error());
            }
            let ace: *const SYSTEM_MANDATORY_LABEL_ACE = ace.cast();
            if (*ace).Header.AceType != SYSTEM_MANDATORY_LABEL_ACE_TYPE {
                continue;
            }
            let mask = (*ace).Mask;
            let sid = sid_string((&raw const (*ace).SidStart).cast_mut().cast())?;
            let mut rights = String::new();
            for (bit, name) in [(0x1, "NW"), (0x2, "NR"), (0x4, "NX")] {
                if mask & bit != 0 {
                    rights.push_str(name);
                }
            }
            let level = match sid.as_str() {
                "S-1-16-4096" => "LW",
                "S-1-16-8192" => "ME",
                "S-1-16-12288" => "HI",
                "S-1-16-16384" => "SI",
                other => other,
            };
            labels.push_str(&format!("(ML;;{rights};;;{level})"));
        }
    }
    Ok(match labels.is_empty() {
        true => labels,
        false => format!("S:{labels}"),
    })
}

/// The DACL of the object behind `handle`, as SDDL.
pub(crate) fn dacl_sddl(handle: BorrowedHandle<'_>) -> io::Result<String> {
    let what = DACL_SECURITY_INFORMATION;
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // Safety: the handle is borrowed, so open for the call; the out pointers
    // are valid, and on success `sd` is a LocalAlloc'ed descriptor we own.
    let err = unsafe {
        GetSecurityInfo(
            handle.as_raw_handle() as HANDLE,
            SE_KERNEL_OBJECT,
            what,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            &mut sd,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    let sd = SecurityDescriptor(sd);
    let mut text: *mut u16 = ptr::null_mut();
    let mut len = 0u32;
    // Safety: `sd.0` is a valid descriptor; on success `text` is a
    // LocalAlloc'ed, NUL-terminated string of `len` characters we own.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd.0,
            SDDL_REVISION_1,
            what,
            &mut text,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: `text` points to `len` valid UTF-16 units (the count includes
    // the NUL); it is freed right after copying.
    let sddl = unsafe {
        let units = std::slice::from_raw_parts(text, len as usize);
        let s = String::from_utf16_lossy(units)
            .trim_end_matches('\0')
            .to_owned();
        LocalFree(text.cast());
        s
    };
    Ok(sddl)
}

/// The working set of this process, in bytes.
pub(crate) fn resident_memory() -> Option<u64> {
    // Safety: PROCESS_MEMORY_COUNTERS is plain data, valid when zeroed.
    let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    counters.cb = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    // Safety: the pseudo handle needs no closing; `counters` is valid and its
    // size is given.
    let ok = unsafe { K32GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, counters.cb) };
    (ok != 0).then_some(counters.WorkingSetSize as u64)
}

/// CPU time, working set and peak working set of `child`.
pub(crate) fn child_usage(child: &std::process::Child) -> Option<(std::time::Duration, u64, u64)> {
    let handle = child.as_raw_handle() as HANDLE;
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // Safety: the handle belongs to `child`, borrowed for the call; the four
    // out pointers are valid.
    let ok = unsafe { GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user) };
    if ok == 0 {
        return None;
    }
    let hundred_ns = |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
    let cpu = std::time::Duration::from_nanos((hundred_ns(kernel) + hundred_ns(user)) * 100);
    // Safety: PROCESS_MEMORY_COUNTERS is plain data, valid when zeroed.
    let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    counters.cb = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    // Safety: as above, with `counters` valid and its size given.
    let ok = unsafe { K32GetProcessMemoryInfo(handle, &mut counters, counters.cb) };
    (ok != 0).then_some((
        cpu,
        counters.WorkingSetSize as u64,
        counters.PeakWorkingSetSize as u64,
    ))
}
