//! The pipe's security descriptor: SDDL (given, or written from the access
//! presets) made into the descriptor every instance is created with, and
//! the presets' mandatory label, added as a binary ACE.

use std::{io, mem::size_of, ptr};

use windows_sys::Win32::{
    Foundation::LocalFree,
    Security::{
        AddMandatoryAce,
        Authorization::{ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1},
        GetLengthSid, GetSecurityDescriptorDacl, InitializeAcl, InitializeSecurityDescriptor,
        SetSecurityDescriptorControl, SetSecurityDescriptorDacl, SetSecurityDescriptorSacl, ACL,
        ACL_REVISION, PSECURITY_DESCRIPTOR, SECURITY_DESCRIPTOR, SE_DACL_PROTECTED,
        SYSTEM_MANDATORY_LABEL_ACE,
    },
};

use super::{
    identity::{current_user, Sid},
    invalid,
};
use crate::sys::Security;

/// `SECURITY_DESCRIPTOR_REVISION` and `SYSTEM_MANDATORY_LABEL_NO_WRITE_UP`
/// (windows-sys has them under `System_SystemServices`, a large module for
/// two numbers).
const SECURITY_DESCRIPTOR_REVISION: u32 = 1;
const NO_WRITE_UP: u32 = 0x1;

/// The low mandatory level.
const LOW_INTEGRITY: &str = "S-1-16-4096";

/// What a client needs of a pipe: `FILE_GENERIC_READ | FILE_WRITE_DATA |
/// FILE_WRITE_ATTRIBUTES` (the last to set message read mode). Not
/// `FILE_APPEND_DATA`, which on a pipe is `FILE_CREATE_PIPE_INSTANCE`.
const CLIENT_RIGHTS: &str = "0x12018b";

/// The descriptor `security` asks for; `None` for the system's default.
pub(super) fn descriptor(security: &Security) -> io::Result<Option<PipeSecurity>> {
    let (sddl, low_label) = match security {
        Security::SystemDefault => return Ok(None),
        // Not `OW`: the owner of an elevated process's objects is
        // BUILTIN\Administrators, which would let every elevated
        // administrator in (and create instances). The user's own SID.
        Security::OwnerOnly => (
            format!("D:P(A;;GA;;;SY)(A;;GA;;;{})", current_user()?.sid),
            false,
        ),
        Security::Sddl(sddl) => (sddl.clone(), false),
        Security::Allow { sids, low_label } => (allow_sddl(&current_user()?.sid, sids), *low_label),
    };
    let sd = SecurityDescriptor::from_sddl(&sddl)
        .map_err(|e| invalid(format!("invalid security descriptor {sddl:?}: {e}")))?;
    let label = match low_label {
        true => Some(Labeled::new(&sd)?),
        false => None,
    };
    Ok(Some(PipeSecurity { label, sd }))
}

/// The DACL of `Security::Allow`: `me` in full, `sids` as clients. The SID
/// strings were checked by the builder (digits and dashes only), so none
/// can add entries of its own.
fn allow_sddl(me: &str, sids: &[String]) -> String {
    let mut sddl = format!("D:P(A;;GA;;;{me})");
    for sid in sids {
        sddl.push_str(&format!("(A;;{CLIENT_RIGHTS};;;{sid})"));
    }
    sddl
}

/// What pipe instances are created with: a descriptor from SDDL, with the
/// low mandatory label if asked.
#[derive(Debug)]
pub(super) struct PipeSecurity {
    /// Declared first, so dropped first: it points into `sd`.
    label: Option<Labeled>,
    sd: SecurityDescriptor,
}

impl PipeSecurity {
    /// The descriptor for `SECURITY_ATTRIBUTES`, valid while `self` lives.
    pub(super) fn as_ptr(&self) -> PSECURITY_DESCRIPTOR {
        match &self.label {
            Some(labeled) => (&raw const *labeled.absolute).cast_mut().cast(),
            None => self.sd.0,
        }
    }
}

/// A descriptor with the DACL of an SDDL one and a SACL holding one
/// mandatory label: low, no write up (processes at low integrity may write
/// to the pipe, so connect). Made as a binary ACE, not as SDDL's
/// `S:(ML;;NW;;;LW)`, which Wine's SDDL parser gets wrong. Setting a label
/// at or below the creator's own integrity needs no privilege.
struct Labeled {
    /// An absolute descriptor, pointing to the DACL inside the SDDL one
    /// (which `PipeSecurity` keeps alive beside it) and to `sacl`.
    absolute: Box<SECURITY_DESCRIPTOR>,
    /// The SACL's storage (u64s: aligned as an ACL must be).
    _sacl: Box<[u64]>,
    /// The label's SID, which the ACE holds a copy of.
    _low: Sid,
}

impl Labeled {
    fn new(sd: &SecurityDescriptor) -> io::Result<Labeled> {
        let low = Sid::parse(LOW_INTEGRITY)?;
        // Safety: `low` is a valid SID.
        let sid_len = unsafe { GetLengthSid(low.as_psid()) } as usize;
        let acl_len =
            size_of::<ACL>() + size_of::<SYSTEM_MANDATORY_LABEL_ACE>() - size_of::<u32>() + sid_len;
        let mut sacl = vec![0u64; acl_len.div_ceil(8)].into_boxed_slice();
        let acl: *mut ACL = sacl.as_mut_ptr().cast();
        // Safety: `acl` points to `acl_len` zeroed, aligned bytes we own,
        // room for the header and the one ACE (the SID_START u32 of the ACE
        // struct is the SID's first bytes); `low` is valid for the call.
        let ok = unsafe {
            InitializeAcl(acl, acl_len as u32, ACL_REVISION) != 0
                && AddMandatoryAce(acl, ACL_REVISION, 0, NO_WRITE_UP, low.as_psid()) != 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        // Safety: SECURITY_DESCRIPTOR is plain data, valid when zeroed.
        let mut absolute: Box<SECURITY_DESCRIPTOR> = Box::new(unsafe { std::mem::zeroed() });
        let abs: PSECURITY_DESCRIPTOR = (&raw mut *absolute).cast();
        let (mut present, mut dacl, mut defaulted) = (0, ptr::null_mut(), 0);
        // Safety: `abs` is ours, boxed (it does not move); `sd.0` is a valid
        // descriptor whose DACL pointer stays valid while `sd` lives, which
        // the caller keeps beside this; `acl` lives in `sacl`, kept here.
        let ok = unsafe {
            InitializeSecurityDescriptor(abs, SECURITY_DESCRIPTOR_REVISION) != 0
                && GetSecurityDescriptorDacl(sd.0, &mut present, &mut dacl, &mut defaulted) != 0
                && SetSecurityDescriptorDacl(abs, present, dacl, defaulted) != 0
                && SetSecurityDescriptorControl(abs, SE_DACL_PROTECTED, SE_DACL_PROTECTED) != 0
                && SetSecurityDescriptorSacl(abs, 1, acl, 0) != 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        Ok(Labeled {
            absolute,
            _sacl: sacl,
            _low: low,
        })
    }
}

impl std::fmt::Debug for Labeled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Labeled(low, no write up)")
    }
}

// Safety: the descriptor and what it points to are made once, never
// changed, and only read by `CreateNamedPipeW`, from any thread.
unsafe impl Send for Labeled {}
// Safety: as above; shared references only ever read it.
unsafe impl Sync for Labeled {}

/// A security descriptor made from SDDL, freed with `LocalFree`.
#[derive(Debug)]
pub(super) struct SecurityDescriptor(pub(super) PSECURITY_DESCRIPTOR);

// Safety: the descriptor is created once, never changed, and only read by
// `CreateNamedPipeW`, from any thread.
unsafe impl Send for SecurityDescriptor {}
// Safety: as above; shared references only ever read it.
unsafe impl Sync for SecurityDescriptor {}

impl SecurityDescriptor {
    fn from_sddl(sddl: &str) -> io::Result<Self> {
        let wide: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // Safety: `wide` is NUL-terminated and outlives the call; on success
        // `sd` receives a descriptor allocated with LocalAlloc, which we own.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SecurityDescriptor(sd))
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // Safety: the descriptor came from LocalAlloc (see `from_sddl`) and is
        // freed once, here.
        unsafe { LocalFree(self.0) };
    }
}
