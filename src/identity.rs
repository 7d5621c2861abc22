//! Who is on the other end: the user a process runs as.

use std::fmt;

use crate::{error::Kind, sys, Error};

/// The user a process runs as: a user SID on Windows (a token's user: the
/// connection's, for a client), a uid (and primary gid) on Unix (the
/// socket's peer credentials).
///
/// A server learns its client's from [`ConnectionInfo::user`](crate::ConnectionInfo::user);
/// a client checks its server's with
/// [`server_identity`](crate::client::Builder::server_identity).
///
/// # Examples
///
/// ```
/// let me = pipeserve::User::current()?;
/// println!("running as {me}");
/// # Ok::<(), pipeserve::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct User(pub(crate) sys::User);

impl User {
    /// The user this process runs as.
    ///
    /// # Errors
    ///
    /// [`Error::is_io`] if the system does not say (Windows: the process
    /// token cannot be read).
    pub fn current() -> Result<User, Error> {
        sys::current_user()
            .map(User)
            .map_err(|e| Error::from_io(e).context("reading this process's user"))
    }

    /// A user by name: a SID string (`S-1-5-18`) on Windows, a decimal uid
    /// (`0`) on Unix.
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for a malformed SID or uid.
    pub fn parse(user: &str) -> Result<User, Error> {
        sys::User::parse(user)
            .map(User)
            .map_err(|e| Error::new(Kind::Config).with(e))
    }

    /// The user's SID in string form, `S-1-5-21-...`.
    #[cfg(windows)]
    pub fn sid(&self) -> &str {
        &self.0.sid
    }

    /// `DOMAIN\name` of the SID, when it resolves (`LookupAccountSidW`,
    /// which may ask a domain controller: looked up on each call).
    #[cfg(windows)]
    pub fn account(&self) -> Option<String> {
        self.0.account()
    }

    /// The user's uid.
    #[cfg(unix)]
    pub fn uid(&self) -> u32 {
        self.0.uid
    }

    /// The user's primary gid, when known (peer credentials tell it; a user
    /// made by [`parse`](User::parse) has none).
    #[cfg(unix)]
    pub fn gid(&self) -> Option<u32> {
        self.0.gid
    }
}

/// Two users are the same when their SID (Windows) or uid (Unix) is.
impl PartialEq for User {
    fn eq(&self, other: &User) -> bool {
        self.0.same(&other.0)
    }
}

impl Eq for User {}

/// Hashes what [`PartialEq`] compares: the SID (Windows), the uid (Unix).
impl std::hash::Hash for User {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        #[cfg(windows)]
        self.0.sid.hash(state);
        #[cfg(unix)]
        self.0.uid.hash(state);
    }
}

impl fmt::Display for User {
    /// The SID on Windows, `uid=N` on Unix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(windows)]
        return f.write_str(&self.0.sid);
        #[cfg(unix)]
        return write!(f, "uid={}", self.0.uid);
    }
}
