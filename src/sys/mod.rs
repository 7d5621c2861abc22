//! The platform seam: everything that names a Windows or Unix type.
//!
//! Each platform module provides the same items:
//!
//! - `full_path` / `portable_path`: name resolution for [`Address`](crate::Address);
//! - `bind`: creates the server's listening side, returning one `Slot` per
//!   instance ([`Slot`](crate::server::pool::Slot));
//! - `connect` and `is_busy`: the client's single connection attempt, and
//!   whether its error is worth retrying.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use self::unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use self::windows::*;
