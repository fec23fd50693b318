//! What signalling asks the organisation directory (the admin plane) about scheduled
//! meetings. Signalling depends only on this trait; `huitong serve` plugs the admin
//! plane in, and a signalling node without one serves ad-hoc and configured meetings.

use futures_util::future::BoxFuture;

use crate::SignalError;

/// Who joined, as the directory knows them (from a valid access token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub display_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryRole {
    Host,
    CoHost,
    Participant,
}

/// The directory's answer to a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinVerdict {
    /// The directory has no meeting under this number: signalling decides alone
    /// (ad-hoc or configured meetings).
    NotScheduled,
    Allowed {
        role: DirectoryRole,
        identity: Option<Identity>,
    },
    Refused(SignalError),
}

/// Who signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInWho {
    User(i64),
    /// No directory identity: signalling's participant id and display name.
    Guest {
        key: String,
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInReceipt {
    pub late: bool,
    /// Signed in before; the first record stands.
    pub already: bool,
}

pub trait MeetingDirectory: Send + Sync + 'static {
    /// `credential` is what the joiner presented: an access token if they sent one,
    /// else the passcode.
    fn check_join<'a>(
        &'a self,
        number: &'a str,
        credential: Option<&'a str>,
    ) -> BoxFuture<'a, Result<JoinVerdict, SignalError>>;

    /// Record a sign-in to the meeting's open sign-in. Must be idempotent.
    fn sign_in<'a>(
        &'a self,
        number: &'a str,
        who: SignInWho,
        headcount: u32,
    ) -> BoxFuture<'a, Result<SignInReceipt, SignalError>>;
}
