//! Portable names: one string that means a pipe on Windows and a socket on Unix.

use std::{fmt, path::Path, path::PathBuf};

use crate::{sys, Error};

/// Where a server listens: a named pipe path on Windows, a socket path on Unix.
///
/// Servers and clients take a name and resolve it the same way:
///
/// | name                     | Windows                 | Unix                                   |
/// |--------------------------|-------------------------|----------------------------------------|
/// | `myapp`                  | `\\.\pipe\myapp`        | `$XDG_RUNTIME_DIR/myapp.sock`, else `$TMPDIR/myapp.sock` (`/tmp`) |
/// | `\\.\pipe\other`         | taken as is             | rejected                               |
/// | `/run/myapp/api.sock`    | rejected                | taken as is                            |
///
/// A portable name is 1 to 200 bytes, contains no `/`, `\` or NUL, and is
/// not `.` or `..`. A full pipe path names the local machine (`\\.\`) and has
/// no `.` or `..` component: Windows resolves those, so a name could reach
/// outside the pipe namespace. A
/// socket path must fit `sockaddr_un` (at most 107 bytes on Linux, 103 on
/// macOS).
///
/// # Examples
///
/// ```
/// let addr = pipeserve::Address::new("myapp")?;
/// #[cfg(windows)]
/// assert_eq!(addr.to_string(), r"\\.\pipe\myapp");
/// #[cfg(unix)]
/// assert!(addr.to_string().ends_with("/myapp.sock"));
/// # Ok::<(), pipeserve::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address(PathBuf);

/// The longest portable name, well inside Windows' 256-character pipe names.
const MAX_NAME_LEN: usize = 200;

impl Address {
    /// Resolves a portable name, a full pipe path (Windows) or an absolute
    /// socket path (Unix).
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for an empty or too long name, one with a path
    /// separator or NUL, or a path of the other platform.
    pub fn new(name: &str) -> Result<Address, Error> {
        Address::resolve(name, false)
    }

    /// As [`new`](Address::new), and on Windows `remote` allows a pipe on
    /// another machine (`\\host\pipe\NAME`), which `new` refuses.
    pub(crate) fn resolve(name: &str, remote: bool) -> Result<Address, Error> {
        if name.contains('\0') {
            return Err(Error::config(format!(
                "invalid pipe name {name:?}: contains NUL"
            )));
        }
        if let Some(path) = sys::full_path(name, remote).map_err(Error::from_bind)? {
            return Ok(Address(path));
        }
        if name.is_empty() {
            return Err(Error::config("invalid pipe name: empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Error::config(format!(
                "invalid pipe name: {} bytes, at most {MAX_NAME_LEN}",
                name.len()
            )));
        }
        if name == "." || name == ".." {
            return Err(Error::config(format!(
                "invalid pipe name {name:?}: '.' and '..' are refused"
            )));
        }
        if name.contains(['/', '\\']) {
            return Err(Error::config(format!(
                "invalid pipe name {name:?}: a portable name has no '/' or '\\'; \
                 give a full pipe path or an absolute socket path instead"
            )));
        }
        sys::portable_path(name)
            .map(Address)
            .map_err(Error::from_bind)
    }

    /// The address of a path the system gave (a socket systemd passed).
    #[cfg(all(unix, feature = "systemd"))]
    pub(crate) fn from_path(path: PathBuf) -> Address {
        Address(path)
    }

    /// The pipe path (`\\.\pipe\NAME`) or socket path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_names_reject_separators_nul_and_empty() {
        for bad in ["", "a/b", "a\\b", "a\0b", &"x".repeat(201)] {
            let err = Address::new(bad).unwrap_err();
            assert!(err.is_config(), "{bad:?}: {err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn unix_names_become_socket_paths_and_absolute_paths_stay() {
        let a = Address::new("svc").unwrap();
        assert!(a.as_path().is_absolute());
        assert_eq!(a.as_path().file_name().unwrap(), "svc.sock");
        let b = Address::new("/tmp/x/y.sock").unwrap();
        assert_eq!(b.as_path(), Path::new("/tmp/x/y.sock"));
        assert!(Address::new(r"\\.\pipe\svc").unwrap_err().is_config());
        let long = format!("/tmp/{}", "y".repeat(120));
        assert!(Address::new(&long).unwrap_err().is_config());
    }

    #[cfg(windows)]
    #[test]
    fn windows_names_become_pipe_paths_and_full_paths_stay() {
        assert_eq!(Address::new("svc").unwrap().to_string(), r"\\.\pipe\svc");
        assert_eq!(
            Address::new(r"\\.\pipe\a\b").unwrap().to_string(),
            r"\\.\pipe\a\b"
        );
        assert!(Address::new("/tmp/x.sock").unwrap_err().is_config());
    }
}
