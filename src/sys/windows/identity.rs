//! Who is on the other end: users (a token's user SID), tokens and SIDs,
//! and the client (or server) process of a pipe.

use std::{
    io,
    mem::{size_of, size_of_val},
    os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
    ptr,
    sync::Arc,
};

use windows_sys::Win32::{
    Foundation::{LocalFree, ERROR_INSUFFICIENT_BUFFER, ERROR_PIPE_LOCAL, HANDLE},
    Security::{
        Authorization::{ConvertSidToStringSidW, ConvertStringSidToSidW},
        EqualSid, GetTokenInformation, LookupAccountSidW, TokenGroups, TokenUser, PSID,
        SID_AND_ATTRIBUTES, SID_NAME_USE, TOKEN_GROUPS, TOKEN_INFORMATION_CLASS, TOKEN_QUERY,
        TOKEN_USER,
    },
    System::{
        LibraryLoader::{GetModuleHandleW, GetProcAddress},
        Pipes::{
            GetNamedPipeClientComputerNameW, GetNamedPipeClientProcessId,
            GetNamedPipeClientSessionId, GetNamedPipeServerProcessId,
        },
        Threading::{
            GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
        },
    },
};

use super::{
    impersonate::{thread_token, Impersonation},
    invalid,
    io::ClientIo,
};

/// Who a process runs as: its token's user SID, in string form; for a
/// client, also its connection's token, kept for group checks.
#[derive(Clone)]
pub(crate) struct User {
    pub(crate) sid: String,
    token: Option<Arc<OwnedHandle>>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("User").field(&self.sid).finish()
    }
}

impl User {
    /// A user named by its SID string, checked and normalized.
    pub(crate) fn parse(sid: &str) -> io::Result<User> {
        let parsed = Sid::parse(sid)?;
        Ok(User {
            sid: sid_string(parsed.0)?,
            token: None,
        })
    }

    /// Whether both name the same user.
    pub(crate) fn same(&self, other: &User) -> bool {
        self.sid == other.sid
    }

    /// `DOMAIN\name` for the SID, when it resolves (`LookupAccountSidW`; may
    /// ask a domain controller, so only on demand).
    pub(crate) fn account(&self) -> Option<String> {
        let sid = Sid::parse(&self.sid).ok()?;
        account_name(sid.0)
    }
}

/// Who this process runs as.
pub(crate) fn current_user() -> io::Result<User> {
    // Safety: takes nothing; the pseudo handle it returns needs no closing.
    let process = unsafe { GetCurrentProcess() };
    token_user(&open_token(process, TOKEN_QUERY)?)
}

/// Who the client of a connection is, from the connection itself: the
/// token the pipe acts as (`ImpersonateNamedPipeClient`, then
/// `OpenThreadToken`), kept for group checks. Never through the client's
/// process id, which may name another process by now.
///
/// A client that allowed only anonymous impersonation has no token to read
/// (`ERROR_CANT_OPEN_ANONYMOUS`): an error, as any other failure.
pub(super) fn connection_user(client: &Impersonation) -> io::Result<User> {
    let token = client
        .run(|| thread_token(TOKEN_QUERY))??
        .ok_or_else(|| io::Error::other("acting as the client left the thread without a token"))?;
    let mut user = token_user(&token)?;
    user.token = Some(Arc::new(token));
    Ok(user)
}

/// Who process `pid` runs as, with its token kept.
fn process_user(pid: u32) -> io::Result<User> {
    let token = process_token(pid)?;
    let mut user = token_user(&token)?;
    user.token = Some(Arc::new(token));
    Ok(user)
}

/// Who runs the server end of a client's pipe
/// (`GetNamedPipeServerProcessId`, then that process's token).
pub(crate) fn server_user(pipe: &ClientIo) -> io::Result<User> {
    server_user_of(pipe)
}

/// [`server_user`] of any client end of a pipe.
pub(crate) fn server_user_of(pipe: &impl AsRawHandle) -> io::Result<User> {
    let mut pid = 0u32;
    // Safety: the handle belongs to `pipe`, borrowed for the call; `pid` is a
    // valid place for the result.
    if unsafe { GetNamedPipeServerProcessId(pipe.as_raw_handle() as HANDLE, &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    process_user(pid)
}

/// Whether `user`'s token (the connection's, kept) holds the group `group`
/// (a SID string), enabled: a deny-only group (Administrators in an
/// unelevated admin's token) or a disabled one does not count.
pub(crate) fn in_group(user: &User, group: &str) -> io::Result<bool> {
    const SE_GROUP_ENABLED: u32 = 0x4;
    const SE_GROUP_USE_FOR_DENY_ONLY: u32 = 0x10;
    let group = Sid::parse(group)?;
    let token = user.token.as_ref().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the client's token was not kept")
    })?;
    let buf = token_information(token, TokenGroups)?;
    let bytes = buf.len() * 8;
    let base = buf.as_ptr() as *const TOKEN_GROUPS;
    // Safety: `buf` holds a TOKEN_GROUPS (checked to fit its header), aligned
    // (u64 storage); its `GroupCount` entries follow in the same buffer
    // (checked below). The entries are reached through a raw pointer to the
    // whole buffer, not through the one-element array of the header.
    let groups = unsafe {
        if bytes < size_of::<TOKEN_GROUPS>() {
            return Err(io::Error::other("short TOKEN_GROUPS"));
        }
        let count = (*base).GroupCount as usize;
        let first = std::ptr::addr_of!((*base).Groups).cast::<SID_AND_ATTRIBUTES>();
        let end = (first as usize - base as usize) + count * size_of::<SID_AND_ATTRIBUTES>();
        if end > bytes {
            return Err(io::Error::other("TOKEN_GROUPS overruns its buffer"));
        }
        std::slice::from_raw_parts(first, count)
    };
    Ok(groups.iter().any(|g| {
        g.Attributes & SE_GROUP_ENABLED != 0
            && g.Attributes & SE_GROUP_USE_FOR_DENY_ONLY == 0
            // Safety: both SIDs are valid for the call: one in `buf`, one owned.
            && unsafe { EqualSid(g.Sid, group.0) } != 0
    }))
}

/// A process's token, for querying.
fn process_token(pid: u32) -> io::Result<OwnedHandle> {
    // Safety: plain call; a non-null result is a handle we own.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    // Safety: `process` was just opened for us.
    let process = unsafe { OwnedHandle::from_raw_handle(process as RawHandle) };
    open_token(process.as_raw_handle() as HANDLE, TOKEN_QUERY)
}

/// The token of an open process, with `access` (`TOKEN_QUERY` to read it).
pub(super) fn open_token(process: HANDLE, access: u32) -> io::Result<OwnedHandle> {
    let mut token: HANDLE = ptr::null_mut();
    // Safety: the caller keeps `process` open for the call; `token` receives
    // a handle we own on success.
    if unsafe { OpenProcessToken(process, access, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: `token` was just opened for us.
    Ok(unsafe { OwnedHandle::from_raw_handle(token as RawHandle) })
}

/// A token's information of one class, in an aligned buffer.
fn token_information(token: &OwnedHandle, class: TOKEN_INFORMATION_CLASS) -> io::Result<Vec<u64>> {
    let mut len = 0u32;
    // Safety: asks for the size only (null buffer, length 0).
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            class,
            ptr::null_mut(),
            0,
            &mut len,
        )
    };
    if ok == 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(ERROR_INSUFFICIENT_BUFFER as i32) {
            return Err(e);
        }
    }
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // Safety: `buf` is writable for `len` bytes (at least), and aligned.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            class,
            buf.as_mut_ptr().cast(),
            len,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

/// The user of a token.
pub(super) fn token_user(token: &OwnedHandle) -> io::Result<User> {
    let buf = token_information(token, TokenUser)?;
    if buf.len() * 8 < size_of::<TOKEN_USER>() {
        return Err(io::Error::other("short TOKEN_USER"));
    }
    // Safety: `buf` holds a TOKEN_USER (checked to fit), aligned, whose SID
    // lives in `buf`.
    let sid = unsafe { (*(buf.as_ptr() as *const TOKEN_USER)).User.Sid };
    Ok(User {
        sid: sid_string(sid)?,
        token: None,
    })
}

/// A SID in string form (`S-1-5-21-...`).
pub(super) fn sid_string(sid: PSID) -> io::Result<String> {
    let mut text: *mut u16 = ptr::null_mut();
    // Safety: `sid` is a valid SID (the callers hold its buffer); on success
    // `text` is a LocalAlloc'ed, NUL-terminated string we own.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: `text` is NUL-terminated; it is freed right after copying.
    let s = unsafe {
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
        LocalFree(text.cast());
        s
    };
    Ok(s)
}

/// `DOMAIN\name` of a SID, if it resolves.
fn account_name(sid: PSID) -> Option<String> {
    let (mut name_len, mut domain_len, mut kind) = (0u32, 0u32, 0 as SID_NAME_USE);
    // Safety: asks for the sizes only (null buffers, lengths 0).
    unsafe {
        LookupAccountSidW(
            ptr::null(),
            sid,
            ptr::null_mut(),
            &mut name_len,
            ptr::null_mut(),
            &mut domain_len,
            &mut kind,
        )
    };
    if name_len == 0 {
        return None;
    }
    let mut name = vec![0u16; name_len as usize];
    let mut domain = vec![0u16; domain_len.max(1) as usize];
    // Safety: both buffers are writable for the lengths passed.
    let ok = unsafe {
        LookupAccountSidW(
            ptr::null(),
            sid,
            name.as_mut_ptr(),
            &mut name_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if ok == 0 {
        return None;
    }
    let name = String::from_utf16_lossy(&name[..name_len as usize]);
    let domain = String::from_utf16_lossy(&domain[..domain_len as usize]);
    Some(if domain.is_empty() {
        name
    } else {
        format!("{domain}\\{name}")
    })
}

/// A SID parsed from its string form, freed with `LocalFree`.
pub(super) struct Sid(PSID);

impl Sid {
    /// The SID, valid while `self` lives.
    pub(super) fn as_psid(&self) -> PSID {
        self.0
    }

    pub(super) fn parse(sid: &str) -> io::Result<Sid> {
        let wide: Vec<u16> = sid.encode_utf16().chain(Some(0)).collect();
        let mut out: PSID = ptr::null_mut();
        // Safety: `wide` is NUL-terminated and outlives the call; on success
        // `out` is a LocalAlloc'ed SID we own.
        if unsafe { ConvertStringSidToSidW(wide.as_ptr(), &mut out) } == 0 {
            return Err(invalid(format!(
                "invalid SID {sid:?}: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(Sid(out))
    }
}

impl Drop for Sid {
    fn drop(&mut self) {
        // Safety: the SID came from LocalAlloc (see `parse`), freed once.
        unsafe { LocalFree(self.0) };
    }
}

/// The process id of the client connected to `pipe`, an open pipe handle.
pub(super) fn client_pid(pipe: HANDLE) -> Option<u32> {
    let mut pid = 0u32;
    // Safety: the caller's pipe is open for the call, and `pid` is a valid
    // place for the result.
    let ok = unsafe { GetNamedPipeClientProcessId(pipe, &mut pid) };
    (ok != 0).then_some(pid)
}

/// Whether the client connected to `pipe`, an open pipe handle, is on
/// another machine: `GetNamedPipeClientComputerNameW` names a computer only
/// for remote clients (`ERROR_PIPE_LOCAL` otherwise). Anything else it says
/// counts as remote: a pid of a remote client names nothing here.
///
/// Wine serves no remote clients, and its `GetNamedPipeClientComputerNameW`
/// is a stub that raises an exception: under Wine every client is local.
pub(super) fn client_is_remote(pipe: HANDLE) -> bool {
    if running_under_wine() {
        return false;
    }
    let mut name = [0u16; 256];
    // Safety: the caller's pipe is open for the call; `name` is writable for
    // the size passed, in bytes.
    let ok = unsafe {
        GetNamedPipeClientComputerNameW(pipe, name.as_mut_ptr(), size_of_val(&name) as u32)
    };
    ok != 0 || io::Error::last_os_error().raw_os_error() != Some(ERROR_PIPE_LOCAL as i32)
}

/// The session of the client connected to `pipe`, an open pipe handle.
pub(super) fn client_session(pipe: HANDLE) -> Option<u32> {
    let mut session = 0u32;
    // Safety: the caller's pipe is open for the call, and `session` is a
    // valid place for the result.
    let ok = unsafe { GetNamedPipeClientSessionId(pipe, &mut session) };
    (ok != 0).then_some(session)
}

/// Whether this process runs under Wine (ntdll exports `wine_get_version`).
pub(super) fn running_under_wine() -> bool {
    static WINE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WINE.get_or_init(|| {
        let ntdll: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
        // Safety: both strings are NUL-terminated and outlive the calls;
        // ntdll is loaded in every Windows process, and the module handle is
        // only passed to `GetProcAddress`, never freed.
        unsafe {
            let module = GetModuleHandleW(ntdll.as_ptr());
            !module.is_null()
                && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
        }
    })
}
