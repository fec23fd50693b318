//! The admin plane answers signalling's questions about scheduled meetings: who may
//! join, in which role, and the roll-call sign-ins. Only this adapter knows both sides.

use admin_api::{AdminState, JoinDecision, JoinRole, SignInOutcome, SignInParticipant};
use futures_util::future::BoxFuture;
use signaling::{
    DirectoryRole, Identity, JoinVerdict, MeetingDirectory, SignInReceipt, SignInWho, SignalError,
};

pub struct AdminDirectory(pub AdminState);

fn internal(e: admin_api::Error) -> SignalError {
    // The cause goes to the log; the client learns only that the directory failed.
    tracing::error!(error = %e, "directory lookup failed");
    SignalError::Internal("directory unavailable".into())
}

impl MeetingDirectory for AdminDirectory {
    fn check_join<'a>(
        &'a self,
        number: &'a str,
        credential: Option<&'a str>,
    ) -> BoxFuture<'a, Result<JoinVerdict, SignalError>> {
        Box::pin(async move {
            let d = self
                .0
                .check_join(number, credential)
                .await
                .map_err(internal)?;
            Ok(match d {
                JoinDecision::Allowed { role, identity, .. } => JoinVerdict::Allowed {
                    role: match role {
                        JoinRole::Host => DirectoryRole::Host,
                        JoinRole::CoHost => DirectoryRole::CoHost,
                        JoinRole::Participant => DirectoryRole::Participant,
                    },
                    identity: identity.map(|i| Identity {
                        user_id: i.user_id,
                        display_name: i.display_name,
                    }),
                },
                JoinDecision::UnknownMeeting => JoinVerdict::NotScheduled,
                JoinDecision::Cancelled => JoinVerdict::Refused(SignalError::MeetingCancelled),
                JoinDecision::WrongPasscode => JoinVerdict::Refused(SignalError::WrongPasscode),
                JoinDecision::DirectoryOnly => JoinVerdict::Refused(SignalError::DirectoryOnly),
                JoinDecision::Locked => JoinVerdict::Refused(SignalError::MeetingLocked),
            })
        })
    }

    fn sign_in<'a>(
        &'a self,
        number: &'a str,
        who: SignInWho,
        headcount: u32,
    ) -> BoxFuture<'a, Result<SignInReceipt, SignalError>> {
        Box::pin(async move {
            let who = match who {
                SignInWho::User(id) => SignInParticipant::User(id),
                SignInWho::Guest { key, name } => SignInParticipant::Guest { key, name },
            };
            match self
                .0
                .record_sign_in(number, who, headcount)
                .await
                .map_err(internal)?
            {
                SignInOutcome::Recorded { late } => Ok(SignInReceipt {
                    late,
                    already: false,
                }),
                SignInOutcome::AlreadySigned { late } => Ok(SignInReceipt {
                    late,
                    already: true,
                }),
                SignInOutcome::NoOpenSignin | SignInOutcome::Closed => {
                    Err(SignalError::NoOpenSignIn)
                }
                SignInOutcome::UnknownMeeting => {
                    Err(SignalError::UnknownMeeting(number.to_string()))
                }
                SignInOutcome::UnknownParticipant => Err(SignalError::BadRequest(
                    "this meeting's sign-in is for directory members".into(),
                )),
            }
        })
    }
}
