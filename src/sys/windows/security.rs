//! The pipe's security descriptor: SDDL made into the descriptor every
//! instance is created with.

use std::{io, ptr};

use windows_sys::Win32::{
    Foundation::LocalFree,
    Security::{
        Authorization::{ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1},
        PSECURITY_DESCRIPTOR,
    },
};

use super::{identity::current_user, invalid};
use crate::sys::Security;

/// The descriptor `security` asks for; `None` for the system's default.
pub(super) fn descriptor(security: &Security) -> io::Result<Option<SecurityDescriptor>> {
    let sddl = match security {
        Security::SystemDefault => return Ok(None),
        // Not `OW`: the owner of an elevated process's objects is
        // BUILTIN\Administrators, which would let every elevated
        // administrator in (and create instances). The user's own SID.
        Security::OwnerOnly => format!("D:P(A;;GA;;;SY)(A;;GA;;;{})", current_user()?.sid),
        Security::Sddl(sddl) => sddl.clone(),
    };
    SecurityDescriptor::from_sddl(&sddl)
        .map(Some)
        .map_err(|e| invalid(format!("invalid security descriptor {sddl:?}: {e}")))
}

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
