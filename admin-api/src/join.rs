//! The hooks signalling calls: may this participant join meeting N, and record this
//! participant's sign-in. Both are plain async methods on [`AdminState`]; they never
//! return a phone number or any other private directory field.

use crate::AdminState;
use crate::audit::{AuditEvent, Outcome};
use crate::error::Error;
use crate::signin::{AttendanceStatus, Participant};

/// The joiner's directory identity, when they presented a valid access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinIdentity {
    pub user_id: i64,
    pub display_name: String,
    pub org_id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRole {
    Host,
    CoHost,
    Participant,
}

/// The answer to [`AdminState::check_join`]. Each refusal maps to one signalling error
/// (`unknown_meeting`, `wrong_passcode`, `meeting_locked`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinDecision {
    Allowed {
        meeting_id: i64,
        number: String,
        title: String,
        role: JoinRole,
        identity: Option<JoinIdentity>,
        locked: bool,
        recording: bool,
        layout: String,
    },
    UnknownMeeting,
    Cancelled,
    WrongPasscode,
    /// "Directory members only": a valid directory token is required.
    DirectoryOnly,
    /// Locked meetings admit only the host and co-hosts.
    Locked,
}

/// What [`AdminState::record_sign_in`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInOutcome {
    Recorded {
        late: bool,
    },
    /// Signed in before; the first record stands (the call is idempotent).
    AlreadySigned {
        late: bool,
    },
    NoOpenSignin,
    Closed,
    UnknownMeeting,
    UnknownParticipant,
}

/// Who is signing in, as signalling knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInParticipant {
    /// A directory user (from the join token).
    User(i64),
    /// A room system; `headcount` people in the room.
    Terminal(i64),
    /// A guest without a directory identity: signalling's participant id and name.
    Guest { key: String, name: String },
}

impl AdminState {
    /// Decide whether someone may join meeting `number`. `passcode_or_token` is what
    /// the joiner presented: the meeting passcode, or an access token issued by this
    /// admin plane (`POST /api/v1/auth/login`). The host, co-hosts and invitees with a
    /// valid token need no passcode.
    pub async fn check_join(
        &self,
        number: &str,
        passcode_or_token: Option<&str>,
    ) -> Result<JoinDecision, Error> {
        if number.len() > 32 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(JoinDecision::UnknownMeeting);
        }
        let Some(m) = self.meeting_by_number(number).await? else {
            return Ok(JoinDecision::UnknownMeeting);
        };
        if m.status == "cancelled" {
            return Ok(JoinDecision::Cancelled);
        }
        let presented = passcode_or_token.unwrap_or("");
        // Tokens are JWTs (three dot-separated parts); passcodes are digits.
        let identity = if presented.contains('.') {
            self.authenticate(presented, "signalling").await.ok()
        } else {
            None
        };
        let role = match &identity {
            Some(a) if a.user_id == m.host_id || a.user_id == m.owner_id => JoinRole::Host,
            Some(a) if m.cohost_ids.contains(&a.user_id) => JoinRole::CoHost,
            _ => JoinRole::Participant,
        };
        let invited = match &identity {
            Some(a) => role != JoinRole::Participant || self.is_invited(m.id, a.user_id).await?,
            None => false,
        };
        if m.directory_only && identity.is_none() {
            return Ok(JoinDecision::DirectoryOnly);
        }
        if let Some(p) = &m.passcode {
            let ok = invited || constant_time_eq(p.as_bytes(), presented.as_bytes());
            if !ok {
                return Ok(JoinDecision::WrongPasscode);
            }
        }
        if m.locked && role == JoinRole::Participant {
            return Ok(JoinDecision::Locked);
        }
        Ok(JoinDecision::Allowed {
            meeting_id: m.id,
            number: m.number,
            title: m.title,
            role,
            identity: identity.map(|a| JoinIdentity {
                user_id: a.user_id,
                display_name: a.name,
                org_id: a.org_id,
            }),
            locked: m.locked,
            recording: m.recording,
            layout: m.layout,
        })
    }

    /// Record that a participant of meeting `number` signed in to its current sign-in.
    /// Idempotent: calling it again for the same participant changes nothing and
    /// returns [`SignInOutcome::AlreadySigned`].
    pub async fn record_sign_in(
        &self,
        number: &str,
        who: SignInParticipant,
        headcount: u32,
    ) -> Result<SignInOutcome, Error> {
        let Some(m) = self.meeting_by_number(number).await? else {
            return Ok(SignInOutcome::UnknownMeeting);
        };
        let Some(s) = self.latest_signin(m.id).await? else {
            return Ok(SignInOutcome::NoOpenSignin);
        };
        let participant = match who {
            SignInParticipant::User(id) => match self.user(id).await? {
                Some(u) => Participant::User {
                    id,
                    name: u.name,
                    org_id: u.org_id,
                },
                None => return Ok(SignInOutcome::UnknownParticipant),
            },
            SignInParticipant::Terminal(id) => match self.terminal(id).await? {
                Some(t) => Participant::Terminal {
                    id,
                    name: t.name,
                    org_id: t.org_id,
                },
                None => return Ok(SignInOutcome::UnknownParticipant),
            },
            SignInParticipant::Guest { key, name } => {
                if m.directory_only {
                    return Ok(SignInOutcome::UnknownParticipant);
                }
                Participant::Guest {
                    key: key.chars().take(64).collect(),
                    name: name.chars().filter(|c| !c.is_control()).take(64).collect(),
                }
            }
        };
        match self
            .submit_signin(&s, &participant, i64::from(headcount.max(1)), "signalling")
            .await
        {
            Ok(r) => {
                let late = r.status == AttendanceStatus::Late;
                if r.newly_recorded {
                    self.audit(AuditEvent {
                        actor_id: None,
                        actor_name: "signalling".into(),
                        ip: String::new(),
                        action: "signin_submit".into(),
                        target: format!("meeting:{} signin:{}", m.id, s.id),
                        scope_path: m.org_path.clone(),
                        outcome: Outcome::Ok,
                        detail: match &participant {
                            Participant::User { id, .. } => format!("user:{id}"),
                            Participant::Terminal { id, .. } => format!("terminal:{id}"),
                            Participant::Guest { key, .. } => format!("guest:{key}"),
                        },
                    })
                    .await?;
                    Ok(SignInOutcome::Recorded { late })
                } else {
                    Ok(SignInOutcome::AlreadySigned { late })
                }
            }
            Err(e) if e.code == crate::ErrorCode::SigninClosed => Ok(SignInOutcome::Closed),
            Err(e) => Err(Error::Api(e)),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
