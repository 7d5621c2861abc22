//! Pipe paths: a portable name is `\\.\pipe\NAME`; a full path is checked.

use std::{io, path::PathBuf};

use super::invalid;

/// The longest pipe path Windows accepts.
const MAX_PIPE_PATH: usize = 256;

/// A full pipe path, `\\.\pipe\NAME`, checked: no `.` or `..` component
/// (Windows resolves them in `\\.\` paths, so a name could reach outside
/// the pipe namespace), and the local machine (`.`) unless `remote`.
pub(crate) fn full_path(name: &str, remote: bool) -> io::Result<Option<PathBuf>> {
    if name.starts_with('/') {
        return Err(invalid(format!(
            "invalid pipe name {name:?}: a unix socket path, and this is windows"
        )));
    }
    if !name.starts_with(r"\\") {
        return Ok(None);
    }
    // \\server\pipe\name
    let mut parts = name[2..].splitn(3, '\\');
    let (server, pipe, rest) = (parts.next(), parts.next(), parts.next());
    let (Some(server), Some(pipe), Some(rest)) = (server, pipe, rest) else {
        return Err(invalid(format!(
            r"invalid pipe path {name:?}: expected \\.\pipe\NAME"
        )));
    };
    if server.is_empty() || !pipe.eq_ignore_ascii_case("pipe") || rest.is_empty() {
        return Err(invalid(format!(
            r"invalid pipe path {name:?}: expected \\.\pipe\NAME"
        )));
    }
    if rest
        .split(['\\', '/'])
        .any(|c| !c.is_empty() && c.chars().all(|ch| ch == '.' || ch == ' '))
    {
        return Err(invalid(format!(
            "invalid pipe path {name:?}: '.' and '..' components are refused"
        )));
    }
    if server != "." && !remote {
        return Err(invalid(format!(
            "pipe path {name:?} names another machine ({server}); remote pipes are refused unless asked for"
        )));
    }
    check_len(PathBuf::from(name)).map(Some)
}

pub(crate) fn portable_path(name: &str) -> io::Result<PathBuf> {
    check_len(PathBuf::from(format!(r"\\.\pipe\{name}")))
}

fn check_len(path: PathBuf) -> io::Result<PathBuf> {
    let len = path.as_os_str().encode_wide_len();
    if len > MAX_PIPE_PATH {
        return Err(invalid(format!(
            "pipe path {} is {len} characters, at most {MAX_PIPE_PATH}",
            path.display()
        )));
    }
    Ok(path)
}

trait EncodeWideLen {
    fn encode_wide_len(&self) -> usize;
}

impl EncodeWideLen for std::ffi::OsStr {
    fn encode_wide_len(&self) -> usize {
        use std::os::windows::ffi::OsStrExt;
        self.encode_wide().count()
    }
}
