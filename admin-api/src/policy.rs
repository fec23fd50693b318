//! Authorisation, in one place. Every route names the [`Action`] it performs and the
//! [`Target`] it touches and calls [`AdminState::authorize`](crate::AdminState::authorize),
//! which asks [`decide`] and audits every refusal. Nothing else grants or refuses.
//!
//! Graded protection level 3 separates three admin roles: the system admin runs the
//! business (directory, terminals, meetings), the security admin runs accounts' security
//! (roles, password and lockout policy, unlocks, resets), the audit admin only reads the
//! audit log. None can do another's job. Each admin's reach is an organisation subtree
//! (`scope_path`); ordinary users manage only their own meetings.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    SystemAdmin,
    SecurityAdmin,
    AuditAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::SystemAdmin => "system_admin",
            Role::SecurityAdmin => "security_admin",
            Role::AuditAdmin => "audit_admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => Role::User,
            "system_admin" => Role::SystemAdmin,
            "security_admin" => Role::SecurityAdmin,
            "audit_admin" => Role::AuditAdmin,
            _ => return None,
        })
    }
    pub fn is_admin(self) -> bool {
        self != Role::User
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user_id: i64,
    pub username: String,
    pub name: String,
    pub role: Role,
    pub org_id: i64,
    pub org_path: String,
    /// The admin's subtree (`/1/5/`); `None` for ordinary users.
    pub scope_path: Option<String>,
    pub must_change_password: bool,
    pub session_id: String,
    pub ip: String,
}

/// Everything a request can do. Adding a route means adding (or reusing) an action here
/// and deciding who may perform it in [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Own profile, own password, logout: always allowed to the account itself.
    OwnAccount,
    /// Participant-facing directory (names, orgs, non-hidden phones).
    DirectoryBrowse,
    OrgRead,
    OrgWrite,
    UserRead,
    UserWrite,
    TerminalRead,
    TerminalWrite,
    /// Schedule a meeting owned by oneself.
    MeetingCreate,
    MeetingRead,
    MeetingWrite,
    /// Start/end a sign-in, see its results.
    SigninManage,
    SigninSubmit,
    SecurityPolicyRead,
    SecurityPolicyWrite,
    AccountRead,
    AccountWrite,
    AuditRead,
    /// Watch a recording: owner, users it is shared with, system admins in scope.
    RecordingRead,
    /// Share or delete a recording: owner, system admins in scope.
    RecordingWrite,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::OwnAccount => "own_account",
            Action::DirectoryBrowse => "directory_browse",
            Action::OrgRead => "org_read",
            Action::OrgWrite => "org_write",
            Action::UserRead => "user_read",
            Action::UserWrite => "user_write",
            Action::TerminalRead => "terminal_read",
            Action::TerminalWrite => "terminal_write",
            Action::MeetingCreate => "meeting_create",
            Action::MeetingRead => "meeting_read",
            Action::MeetingWrite => "meeting_write",
            Action::SigninManage => "signin_manage",
            Action::SigninSubmit => "signin_submit",
            Action::SecurityPolicyRead => "security_policy_read",
            Action::SecurityPolicyWrite => "security_policy_write",
            Action::AccountRead => "account_read",
            Action::AccountWrite => "account_write",
            Action::AuditRead => "audit_read",
            Action::RecordingRead => "recording_read",
            Action::RecordingWrite => "recording_write",
        }
    }
}

/// What an action touches.
#[derive(Debug, Clone)]
pub enum Target<'a> {
    /// Not tied to an organisation (policy, own account).
    Global,
    /// An object inside an organisation (the path of that org). For reads and for
    /// creating something under it, the org itself may be the admin's scope root.
    Org(&'a str),
    /// Changing the org itself (rename, move, delete): must lie strictly below the
    /// admin's scope root, so no admin can edit or escape their own boundary.
    OrgItself(&'a str),
    /// A meeting: its org and the people who own/host it.
    Meeting(MeetingRef<'a>),
    /// A recording: its org, owner, and whether it is shared with the caller (unexpired).
    Recording {
        org_path: &'a str,
        owner_id: i64,
        shared: bool,
    },
}

#[derive(Debug, Clone)]
pub struct MeetingRef<'a> {
    pub org_path: &'a str,
    pub owner_id: i64,
    pub host_id: i64,
    pub cohost_ids: &'a [i64],
    /// Invited explicitly or through an org subtree.
    pub invited: bool,
}

impl Target<'_> {
    /// The org path recorded in the audit entry of a decision on this target.
    pub fn scope_path(&self) -> &str {
        match self {
            Target::Global => "/",
            Target::Org(p) | Target::OrgItself(p) => p,
            Target::Meeting(m) => m.org_path,
            Target::Recording { org_path, .. } => org_path,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Allowed once the account has replaced its expired or one-time password.
    PasswordChangeRequired,
}

fn within(scope: &Option<String>, path: &str) -> bool {
    scope.as_deref().is_some_and(|s| path.starts_with(s))
}

fn strictly_within(scope: &Option<String>, path: &str) -> bool {
    scope
        .as_deref()
        .is_some_and(|s| path.starts_with(s) && path.len() > s.len())
}

/// The whole authorisation policy.
pub fn decide(actor: &Actor, action: Action, target: &Target<'_>) -> Decision {
    if action == Action::OwnAccount {
        return Decision::Allow;
    }
    if actor.must_change_password {
        return Decision::PasswordChangeRequired;
    }
    use Action::*;
    let role = actor.role;
    let scope = &actor.scope_path;
    let in_scope = |t: &Target<'_>| match t {
        Target::Global => false,
        Target::Org(p) => within(scope, p),
        Target::OrgItself(p) => strictly_within(scope, p),
        Target::Meeting(m) => within(scope, m.org_path),
        Target::Recording { org_path, .. } => within(scope, org_path),
    };
    let allowed = match action {
        OwnAccount => true,
        // Every signed-in account may look people up to invite them; hidden phones are
        // removed by the directory view itself.
        DirectoryBrowse => true,
        OrgRead | OrgWrite | UserRead | UserWrite | TerminalRead | TerminalWrite => {
            role == Role::SystemAdmin && in_scope(target)
        }
        // Any account may schedule its own meetings; the route confines the meeting's
        // org to the caller's org or, for a system admin, the admin's scope.
        MeetingCreate => match target {
            Target::Org(p) => {
                (role == Role::SystemAdmin && within(scope, p)) || *p == actor.org_path
            }
            _ => false,
        },
        MeetingRead | MeetingWrite | SigninManage | SigninSubmit => match target {
            Target::Meeting(m) => {
                let own = m.owner_id == actor.user_id || m.host_id == actor.user_id;
                let cohost = m.cohost_ids.contains(&actor.user_id);
                let admin = role == Role::SystemAdmin && in_scope(target);
                match action {
                    MeetingRead => admin || own || cohost || m.invited,
                    MeetingWrite => admin || own,
                    SigninManage => admin || own || cohost,
                    _ => own || cohost || m.invited,
                }
            }
            _ => false,
        },
        SecurityPolicyRead | SecurityPolicyWrite => {
            role == Role::SecurityAdmin && scope.as_deref() == Some(root_scope(actor))
        }
        AccountRead | AccountWrite => role == Role::SecurityAdmin && in_scope(target),
        AuditRead => role == Role::AuditAdmin && in_scope(target),
        RecordingRead | RecordingWrite => match target {
            Target::Recording {
                owner_id, shared, ..
            } => {
                let admin = role == Role::SystemAdmin && in_scope(target);
                let own = *owner_id == actor.user_id;
                admin || own || (action == RecordingRead && *shared)
            }
            _ => false,
        },
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny
    }
}

/// The policy is global: only a security admin whose scope is the whole tree may set it.
fn root_scope(actor: &Actor) -> &str {
    // Root paths have exactly one id: "/<id>/".
    match actor.scope_path.as_deref() {
        Some(s) if s.matches('/').count() == 2 => s,
        _ => "\u{0}",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role, scope: Option<&str>) -> Actor {
        Actor {
            user_id: 10,
            username: "a".into(),
            name: "a".into(),
            role,
            org_id: 2,
            org_path: "/1/2/".into(),
            scope_path: scope.map(str::to_owned),
            must_change_password: false,
            session_id: "s".into(),
            ip: "t".into(),
        }
    }

    #[test]
    fn scope_is_prefix_and_boundary_is_not_editable() {
        let a = actor(Role::SystemAdmin, Some("/1/2/"));
        assert_eq!(
            decide(&a, Action::UserRead, &Target::Org("/1/2/3/")),
            Decision::Allow
        );
        assert_eq!(
            decide(&a, Action::UserRead, &Target::Org("/1/2/")),
            Decision::Allow
        );
        assert_eq!(
            decide(&a, Action::UserRead, &Target::Org("/1/4/")),
            Decision::Deny
        );
        // "/1/2/" must not cover "/1/22/"
        assert_eq!(
            decide(&a, Action::UserRead, &Target::Org("/1/22/")),
            Decision::Deny
        );
        assert_eq!(
            decide(&a, Action::OrgWrite, &Target::OrgItself("/1/2/")),
            Decision::Deny
        );
        assert_eq!(
            decide(&a, Action::OrgWrite, &Target::OrgItself("/1/2/3/")),
            Decision::Allow
        );
    }

    #[test]
    fn roles_are_separated() {
        let sys = actor(Role::SystemAdmin, Some("/1/"));
        let sec = actor(Role::SecurityAdmin, Some("/1/"));
        let aud = actor(Role::AuditAdmin, Some("/1/"));
        let t = Target::Org("/1/2/");
        assert_eq!(decide(&sys, Action::AuditRead, &t), Decision::Deny);
        assert_eq!(
            decide(&sys, Action::SecurityPolicyWrite, &Target::Global),
            Decision::Deny
        );
        assert_eq!(decide(&sec, Action::UserWrite, &t), Decision::Deny);
        assert_eq!(
            decide(&sec, Action::SecurityPolicyWrite, &Target::Global),
            Decision::Allow
        );
        assert_eq!(decide(&aud, Action::AuditRead, &t), Decision::Allow);
        assert_eq!(decide(&aud, Action::UserRead, &t), Decision::Deny);
        assert_eq!(decide(&aud, Action::AccountWrite, &t), Decision::Deny);
    }

    #[test]
    fn expired_password_blocks_everything_but_own_account() {
        let mut a = actor(Role::SystemAdmin, Some("/1/"));
        a.must_change_password = true;
        assert_eq!(
            decide(&a, Action::UserRead, &Target::Org("/1/")),
            Decision::PasswordChangeRequired
        );
        assert_eq!(
            decide(&a, Action::OwnAccount, &Target::Global),
            Decision::Allow
        );
    }
}
