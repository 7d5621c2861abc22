//! Who may connect to a Windows pipe, said by name instead of SDDL.
//!
//! A pipe's security descriptor decides who may open it, before the server
//! sees a client at all. By default it is the server's user and SYSTEM
//! ([`DEFAULT_SDDL`](super::DEFAULT_SDDL)). [`Allow`] names the others a
//! daemon serves; [`Builder::allow`](super::Builder::allow) writes the
//! descriptor from them:
//!
//! - the server's own user: full control, the only one with
//!   `FILE_CREATE_PIPE_INSTANCE`, so nobody else can add rogue instances of
//!   the name;
//! - each user or group allowed: `FILE_GENERIC_READ | FILE_WRITE_DATA |
//!   FILE_WRITE_ATTRIBUTES` (`0x12018b`), what a client needs, message read
//!   mode included;
//! - for low-integrity processes and AppContainers, a mandatory label of
//!   low (`S:(ML;;NW;;;LW)`): without one a pipe is medium, and nothing
//!   below may write to it; for AppContainers also `ALL APPLICATION
//!   PACKAGES`, whom an AppContainer's second access check asks for.
//!
//! The descriptor is protected (`D:P`): nothing is inherited.

use std::{fmt, str::FromStr};

use crate::Error;

/// Who may connect to a pipe, beside the server's own user: see
/// [`Builder::allow`](super::Builder::allow). Windows only (a socket's
/// [`socket_mode`](super::Builder::socket_mode) and
/// [`socket_group`](super::Builder::socket_group) say it on Unix).
///
/// Parses from the names `system`, `administrators`, `authenticated`,
/// `interactive`, `low-integrity` and `app-containers`, or a SID string
/// (`S-1-5-21-...`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Allow {
    /// LocalSystem (`S-1-5-18`): services running as SYSTEM.
    System,
    /// BUILTIN\Administrators (`S-1-5-32-544`): an administrator's elevated
    /// processes (unelevated, the group is deny-only in the token and does
    /// not count).
    Administrators,
    /// Authenticated Users (`S-1-5-11`): every account that logged on, the
    /// machine's services included; not anonymous or guest logons.
    AuthenticatedUsers,
    /// Interactive users (`S-1-5-4`): those logged on at the console or
    /// over Remote Desktop; not services, batch or network logons.
    InteractiveUsers,
    /// A user or group by its SID string (`S-1-5-21-...-1001`,
    /// `S-1-5-32-545`).
    Sid(String),
    /// Low-integrity processes of the users let in (a sandboxed renderer, a
    /// browser's protected mode): the pipe's mandatory label becomes low.
    /// The integrity check then no longer holds back the server's own
    /// user's low processes, which get what that user has, full control
    /// included: allow it for sandboxes you would trust with that
    /// (AppContainers are held to a client's rights by their own check).
    LowIntegrity,
    /// Processes in any AppContainer (UWP and MSIX apps, sandboxes) of the
    /// users let in: `ALL APPLICATION PACKAGES` (`S-1-15-2-1`) and the low
    /// label (AppContainers run at low integrity). An AppContainer reaches
    /// pipes named under `\\.\pipe\LOCAL\`: bind such a full path. Less
    /// privileged AppContainers are not in that group: allow
    /// `ALL RESTRICTED APPLICATION PACKAGES` (`S-1-15-2-2`) by SID.
    AppContainers,
}

impl Allow {
    /// The SID the descriptor grants, if any, and whether the pipe needs
    /// the low label.
    pub(crate) fn grant(&self) -> (Option<&str>, bool) {
        match self {
            Allow::System => (Some("S-1-5-18"), false),
            Allow::Administrators => (Some("S-1-5-32-544"), false),
            Allow::AuthenticatedUsers => (Some("S-1-5-11"), false),
            Allow::InteractiveUsers => (Some("S-1-5-4"), false),
            Allow::Sid(sid) => (Some(sid), false),
            Allow::LowIntegrity => (None, true),
            Allow::AppContainers => (Some("S-1-15-2-1"), true),
        }
    }

    /// Refuses a SID string that is not one: `S-1-`, then numbers
    /// separated by `-`. Checked before it is written into the descriptor,
    /// where anything else could add entries of its own.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let Allow::Sid(sid) = self else {
            return Ok(());
        };
        let well_formed = sid.strip_prefix("S-1-").is_some_and(|rest| {
            rest.split('-')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if well_formed {
            Ok(())
        } else {
            Err(Error::config(format!(
                "allow: {sid:?} is not a SID string (S-1-...)"
            )))
        }
    }
}

impl fmt::Display for Allow {
    /// The name it parses from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Allow::System => "system",
            Allow::Administrators => "administrators",
            Allow::AuthenticatedUsers => "authenticated",
            Allow::InteractiveUsers => "interactive",
            Allow::Sid(sid) => sid,
            Allow::LowIntegrity => "low-integrity",
            Allow::AppContainers => "app-containers",
        })
    }
}

impl FromStr for Allow {
    type Err = Error;

    /// # Errors
    ///
    /// [`Error::is_config`] for a name that is none of the above and not a
    /// SID string.
    fn from_str(s: &str) -> Result<Allow, Error> {
        let allow = match s {
            "system" => Allow::System,
            "administrators" => Allow::Administrators,
            "authenticated" => Allow::AuthenticatedUsers,
            "interactive" => Allow::InteractiveUsers,
            "low-integrity" => Allow::LowIntegrity,
            "app-containers" => Allow::AppContainers,
            sid if sid.starts_with("S-") => Allow::Sid(sid.to_owned()),
            other => {
                return Err(Error::config(format!(
                    "unknown allow {other:?}: expected system, administrators, authenticated, \
                     interactive, low-integrity, app-containers or a SID (S-1-...)"
                )))
            }
        };
        allow.check()?;
        Ok(allow)
    }
}

#[cfg(test)]
mod tests {
    use super::Allow;

    #[test]
    fn every_name_parses_to_its_preset_and_prints_back() {
        for name in [
            "system",
            "administrators",
            "authenticated",
            "interactive",
            "low-integrity",
            "app-containers",
            "S-1-5-21-1-2-3-1001",
        ] {
            let allow: Allow = name.parse().unwrap();
            assert_eq!(allow.to_string(), name);
        }
    }

    #[test]
    fn a_sid_that_could_add_entries_of_its_own_to_the_descriptor_is_refused() {
        for bad in [
            "S-1-1-0)(A;;GA;;;WD",
            "S-1-",
            "S-1-5--1",
            "S-1-5-x",
            "S-2-5-18",
            "everyone",
        ] {
            let err = bad.parse::<Allow>().unwrap_err();
            assert!(err.is_config(), "{bad}: {err}");
            assert!(Allow::Sid(bad.to_owned()).check().is_err(), "{bad}");
        }
    }
}
