//! Who may connect: a check of each client, before it is served.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use super::ConnectionInfo;
use crate::{error::BoxError, User};

/// A rule that decides, from a client's [`ConnectionInfo`] (its user, session,
/// pid), whether the server talks to it: see
/// [`Builder::authorize`](super::Builder::authorize).
///
/// A refused client is closed before anything of it reaches a service (and
/// before it takes one of the places served at once), counted in
/// [`Stats::refused`](super::Stats::refused), and logged at `debug` with the
/// rule's reason. The rules together have the
/// [`authorize_timeout`](super::Builder::authorize_timeout) to decide.
/// Implemented for async closures
/// `Fn(ConnectionInfo) -> impl Future<Output = Result<(), E>>`, and by the
/// rules of this module: [`same_user`], [`user`], and (per platform)
/// `group_sid` (Windows) or `group_gid` (Unix).
///
/// # Examples
///
/// ```no_run
/// use pipeserve::{server::authorize, ConnectionInfo, Server};
///
/// # fn run() -> Result<(), pipeserve::Error> {
/// // Only processes of the user running the server.
/// let server = Server::builder().authorize(authorize::same_user()).bind("myapp")?;
///
/// // Any check of your own, possibly async: decide by the user, which
/// // comes from the connection, never by the pid, which is information only.
/// let allowed = vec![pipeserve::User::current()?];
/// let server = Server::builder()
///     .authorize(move |info: ConnectionInfo| {
///         let ok = info.user().is_some_and(|user| allowed.contains(&user));
///         async move { if ok { Ok(()) } else { Err("not on the list") } }
///     })
///     .bind("other")?;
/// # Ok(()) }
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// `Ok` lets the client in; `Err` refuses it, with the reason logged.
    fn check(&self, info: &ConnectionInfo) -> impl Future<Output = Result<(), BoxError>> + Send;
}

impl<F, Fut, E> Authorize for F
where
    F: Fn(ConnectionInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Into<BoxError>,
{
    async fn check(&self, info: &ConnectionInfo) -> Result<(), BoxError> {
        self(info.clone()).await.map_err(Into::into)
    }
}

/// An [`Authorize`] behind a pointer, as the pool keeps it.
pub(crate) type Authorizer = Arc<dyn ErasedAuthorize>;

pub(crate) trait ErasedAuthorize: Send + Sync + 'static {
    fn check<'a>(
        &'a self,
        info: &'a ConnectionInfo,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;
}

impl<A: Authorize> ErasedAuthorize for A {
    fn check<'a>(
        &'a self,
        info: &'a ConnectionInfo,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>> {
        Box::pin(Authorize::check(self, info))
    }
}

/// Refused, with why.
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refuse(why: String) -> BoxError {
    Box::new(Refused(why))
}

/// The client's user, or a refusal saying it is unknown.
fn client_user(info: &ConnectionInfo) -> Result<User, BoxError> {
    info.user()
        .ok_or_else(|| refuse("the client's user is unknown".to_owned()))
}

/// Lets in only clients that run as the same user as the server (the
/// user's SID on Windows, its uid on Unix). A client whose user cannot be
/// read is refused.
///
/// # Panics
///
/// If this process's own user cannot be read (Windows: the process token),
/// which does not happen in a working process.
pub fn same_user() -> UserIs {
    UserIs(User::current().expect("this process's own user can be read"))
}

/// Lets in only clients that run as `user` (see [`User::parse`]).
pub fn user(user: User) -> UserIs {
    UserIs(user)
}

/// The rule of [`same_user`] and [`user`].
#[derive(Clone, Debug)]
pub struct UserIs(User);

impl Authorize for UserIs {
    async fn check(&self, info: &ConnectionInfo) -> Result<(), BoxError> {
        let user = client_user(info)?;
        if user == self.0 {
            Ok(())
        } else {
            Err(refuse(format!("client runs as {user}, not {}", self.0)))
        }
    }
}

/// Lets in only clients whose token holds the group `sid` (a SID string,
/// such as `S-1-5-32-544` for Administrators), enabled: in an unelevated
/// administrator's token Administrators is deny-only and does not count.
/// Windows only. The groups are read from the connection's token, kept
/// from when the client was identified.
#[cfg(windows)]
pub fn group_sid(sid: &str) -> InGroup {
    InGroup(sid.to_owned())
}

/// Lets in only clients whose primary group is `gid` (the socket's peer
/// credentials tell no supplementary groups). Unix only.
#[cfg(unix)]
pub fn group_gid(gid: u32) -> InGroup {
    InGroup(gid.to_string())
}

/// The rule of `group_sid` (Windows) and `group_gid` (Unix).
#[derive(Clone, Debug)]
pub struct InGroup(String);

impl Authorize for InGroup {
    async fn check(&self, info: &ConnectionInfo) -> Result<(), BoxError> {
        let group = &self.0;
        let user = client_user(info)?;
        let member = crate::sys::in_group(&user.0, group)
            .map_err(|e| refuse(format!("the client's groups cannot be read: {e}")))?;
        if member {
            Ok(())
        } else {
            Err(refuse(format!("client is not in group {group}")))
        }
    }
}
