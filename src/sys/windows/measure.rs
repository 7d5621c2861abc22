//! Process measurements for tests and benchmarks (the `test-util`
//! feature), not the library.

use std::{
    io,
    mem::size_of,
    os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle},
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
        DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, TOKEN_QUERY,
    },
    System::{
        LibraryLoader::{GetModuleHandleW, GetProcAddress},
        ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS},
        Threading::{GetCurrentProcess, GetProcessHandleCount, GetProcessTimes},
    },
};

use super::{identity::token_user, security::SecurityDescriptor};

/// The user of this thread's impersonation token, if it has one
/// (`OpenThreadToken`, as self); `None` when the thread is not
/// impersonating.
pub(crate) fn thread_user() -> Option<String> {
    use windows_sys::Win32::System::Threading::{GetCurrentThread, OpenThreadToken};
    let mut token: HANDLE = ptr::null_mut();
    // Safety: the pseudo handle of this thread needs no closing; `token`
    // receives a handle we own on success.
    let ok = unsafe { OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, 1, &mut token) };
    if ok == 0 {
        return None;
    }
    // Safety: `token` was just opened for us.
    let token = unsafe {
        std::os::windows::io::OwnedHandle::from_raw_handle(token as std::os::windows::io::RawHandle)
    };
    token_user(&token).ok().map(|user| user.sid)
}

/// Whether this process runs under Wine (ntdll exports `wine_get_version`).
pub(crate) fn running_under_wine() -> bool {
    let ntdll: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
    // Safety: both strings are NUL-terminated and outlive the calls; ntdll is
    // loaded in every Windows process, and the module handle is only passed
    // to `GetProcAddress`, never freed.
    unsafe {
        let module = GetModuleHandleW(ntdll.as_ptr());
        !module.is_null() && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
    }
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

/// The DACL of the object behind `handle`, as SDDL.
pub(crate) fn dacl_sddl(handle: BorrowedHandle<'_>) -> io::Result<String> {
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // Safety: the handle is borrowed, so open for the call; the out pointers
    // are valid, and on success `sd` is a LocalAlloc'ed descriptor we own.
    let err = unsafe {
        GetSecurityInfo(
            handle.as_raw_handle() as HANDLE,
            SE_KERNEL_OBJECT,
            DACL_SECURITY_INFORMATION,
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
            DACL_SECURITY_INFORMATION,
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
