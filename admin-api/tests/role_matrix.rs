//! The authorisation matrix: every role × every endpoint × target inside / outside the
//! caller's scope → allowed (200) or refused (403), and every refusal is audited.
//! The expectations below are written out independently of `policy.rs`, and the
//! endpoint list is checked against the OpenAPI document so a new route cannot be
//! forgotten here.

mod common;

use admin_api::directory::{NewUser, TerminalProtocol};
use admin_api::meetings::{Invitees, MeetingDraft};
use axum::http::StatusCode;
use common::*;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU32, Ordering};

both_backends!(role_matrix);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    SysA,
    SecA,
    AudA,
    UserA,
    SysRoot,
    SecRoot,
    AudRoot,
}

const ACTORS: [Who; 7] = [
    Who::SysA,
    Who::SecA,
    Who::AudA,
    Who::UserA,
    Who::SysRoot,
    Who::SecRoot,
    Who::AudRoot,
];

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum May {
    /// System admins, for targets in their scope.
    Sys,
    /// Security admins, in scope.
    Sec,
    /// Audit admins (the search is confined to their own scope).
    Aud,
    /// The security admin of the whole tree only (global policy).
    SecRoot,
    /// System admins in scope, and the ordinary user for their own meeting / org.
    SysOrOwn,
    /// Only the user whose meeting it is (sign oneself in).
    Own,
    /// Every signed-in account.
    Any,
}

fn expected(may: May, who: Who, inside: bool) -> bool {
    let root = matches!(who, Who::SysRoot | Who::SecRoot | Who::AudRoot);
    let sys = matches!(who, Who::SysA | Who::SysRoot) && (inside || root);
    let own = who == Who::UserA && inside;
    match may {
        May::Sys => sys,
        May::Sec => matches!(who, Who::SecA | Who::SecRoot) && (inside || root),
        May::Aud => matches!(who, Who::AudA | Who::AudRoot),
        May::SecRoot => who == Who::SecRoot,
        May::SysOrOwn => sys || own,
        May::Own => own,
        May::Any => true,
    }
}

#[derive(Debug, Clone, Copy)]
enum Ep {
    OrgList,
    OrgCreate,
    OrgGet,
    OrgUpdate,
    OrgDelete,
    OrgMove,
    UserList,
    UserCreate,
    UserGet,
    UserUpdate,
    UserImport,
    UserExport,
    TermList,
    TermCreate,
    TermGet,
    TermUpdate,
    TermDelete,
    DirUsers,
    DirOrgs,
    Me,
    AccountList,
    AccountRole,
    AccountUnlock,
    AccountPassword,
    AccountTotpReset,
    PolicyGet,
    PolicyPut,
    AuditSearch,
    AuditVerify,
    MeetingList,
    MeetingListScope,
    MeetingCreate,
    MeetingGet,
    MeetingUpdate,
    MeetingCancel,
    SigninStart,
    SigninGet,
    SigninEnd,
    SigninSubmit,
    SigninCsv,
    SigninXlsx,
    RecordingList,
    RecordingGet,
    RecordingShare,
    RecordingDelete,
}

const ENDPOINTS: [(Ep, May); 45] = [
    (Ep::OrgList, May::Sys),
    (Ep::OrgCreate, May::Sys),
    (Ep::OrgGet, May::Sys),
    (Ep::OrgUpdate, May::Sys),
    (Ep::OrgDelete, May::Sys),
    (Ep::OrgMove, May::Sys),
    (Ep::UserList, May::Sys),
    (Ep::UserCreate, May::Sys),
    (Ep::UserGet, May::Sys),
    (Ep::UserUpdate, May::Sys),
    (Ep::UserImport, May::Sys),
    (Ep::UserExport, May::Sys),
    (Ep::TermList, May::Sys),
    (Ep::TermCreate, May::Sys),
    (Ep::TermGet, May::Sys),
    (Ep::TermUpdate, May::Sys),
    (Ep::TermDelete, May::Sys),
    (Ep::DirUsers, May::Any),
    (Ep::DirOrgs, May::Any),
    (Ep::Me, May::Any),
    (Ep::AccountList, May::Sec),
    (Ep::AccountRole, May::Sec),
    (Ep::AccountUnlock, May::Sec),
    (Ep::AccountPassword, May::Sec),
    (Ep::AccountTotpReset, May::Sec),
    (Ep::PolicyGet, May::SecRoot),
    (Ep::PolicyPut, May::SecRoot),
    (Ep::AuditSearch, May::Aud),
    (Ep::AuditVerify, May::Aud),
    (Ep::MeetingList, May::Any),
    (Ep::MeetingListScope, May::Sys),
    (Ep::MeetingCreate, May::SysOrOwn),
    (Ep::MeetingGet, May::SysOrOwn),
    (Ep::MeetingUpdate, May::SysOrOwn),
    (Ep::MeetingCancel, May::SysOrOwn),
    (Ep::SigninStart, May::SysOrOwn),
    (Ep::SigninGet, May::SysOrOwn),
    (Ep::SigninEnd, May::SysOrOwn),
    (Ep::SigninSubmit, May::Own),
    (Ep::SigninCsv, May::SysOrOwn),
    (Ep::SigninXlsx, May::SysOrOwn),
    (Ep::RecordingList, May::Any),
    (Ep::RecordingGet, May::SysOrOwn),
    (Ep::RecordingShare, May::SysOrOwn),
    (Ep::RecordingDelete, May::SysOrOwn),
];

/// One side (inside = subtree A, outside = subtree B) of the fixtures.
struct Side {
    org: i64,
    sub: i64,
    owner: i64,
    user: i64,
    terminal: i64,
    meeting: i64,
    signin: i64,
    recording: i64,
}

static N: AtomicU32 = AtomicU32::new(0);
fn n() -> u32 {
    N.fetch_add(1, Ordering::SeqCst)
}

async fn fresh_org(app: &TestApp, parent: i64) -> i64 {
    app.state
        .create_org(parent, &format!("fresh{}", n()), 0)
        .await
        .unwrap()
        .id
}

async fn fresh_user(app: &TestApp, org: i64) -> i64 {
    let nu = NewUser {
        username: format!("fresh{}", n()),
        name: "新人".into(),
        org_id: org,
        title: String::new(),
        tags: String::new(),
        phone: None,
        phone_hidden: false,
        email: None,
    };
    app.state.create_user(&nu).await.unwrap().id
}

fn draft(org: i64, host: i64) -> MeetingDraft {
    MeetingDraft {
        title: "会".into(),
        org_id: org,
        host_id: host,
        cohost_ids: vec![],
        starts_at_ms: T0 + 3_600_000,
        duration_minutes: Some(60),
        recurrence: None,
        passcode: None,
        directory_only: false,
        locked: false,
        layout: "auto".into(),
        recording: false,
        invitees: Invitees::default(),
    }
}

async fn fresh_meeting(app: &TestApp, side: &Side) -> i64 {
    app.state
        .create_meeting(side.owner, &draft(side.sub, side.owner))
        .await
        .unwrap()
        .id
}

async fn request(app: &TestApp, ep: Ep, s: &Side) -> (&'static str, String, Option<Value>) {
    use Ep::*;
    match ep {
        OrgList => ("GET", format!("/api/v1/orgs?parent_id={}", s.sub), None),
        OrgCreate => (
            "POST",
            "/api/v1/orgs".into(),
            Some(json!({"parent_id": s.sub, "name": format!("o{}", n())})),
        ),
        OrgGet => ("GET", format!("/api/v1/orgs/{}", s.sub), None),
        OrgUpdate => (
            "PATCH",
            format!("/api/v1/orgs/{}", s.sub),
            Some(json!({"sort": n()})),
        ),
        OrgDelete => (
            "DELETE",
            format!("/api/v1/orgs/{}", fresh_org(app, s.sub).await),
            None,
        ),
        OrgMove => (
            "POST",
            format!("/api/v1/orgs/{}/move", fresh_org(app, s.sub).await),
            Some(json!({"new_parent_id": s.org})),
        ),
        UserList => ("GET", format!("/api/v1/users?org_id={}", s.sub), None),
        UserCreate => (
            "POST",
            "/api/v1/users".into(),
            Some(json!({"username": format!("u{}", n()), "name": "某", "org_id": s.sub})),
        ),
        UserGet => ("GET", format!("/api/v1/users/{}", s.user), None),
        UserUpdate => (
            "PATCH",
            format!("/api/v1/users/{}", s.user),
            Some(json!({"title": format!("t{}", n())})),
        ),
        UserImport => (
            "CSV",
            format!("/api/v1/users/import?org_id={}&create_orgs=true", s.sub),
            Some(Value::String(format!(
                "username,name,org\nimp{},导入,新组织{}\n",
                n(),
                n()
            ))),
        ),
        UserExport => (
            "GET",
            format!("/api/v1/users/export?org_id={}&format=xlsx", s.sub),
            None,
        ),
        TermList => ("GET", format!("/api/v1/terminals?org_id={}", s.sub), None),
        TermCreate => (
            "POST",
            "/api/v1/terminals".into(),
            Some(json!({"name": "室", "org_id": s.sub, "protocol": "webrtc", "address": "dev-1"})),
        ),
        TermGet => ("GET", format!("/api/v1/terminals/{}", s.terminal), None),
        TermUpdate => (
            "PATCH",
            format!("/api/v1/terminals/{}", s.terminal),
            Some(json!({"address": "sip:x@y"})),
        ),
        TermDelete => {
            let t = app
                .state
                .create_terminal("tmp", s.sub, TerminalProtocol::Sip, "sip:t@x", "")
                .await
                .unwrap();
            ("DELETE", format!("/api/v1/terminals/{}", t.id), None)
        }
        DirUsers => (
            "GET",
            format!("/api/v1/directory/users?org_id={}", s.sub),
            None,
        ),
        DirOrgs => (
            "GET",
            format!("/api/v1/directory/orgs?parent_id={}", s.org),
            None,
        ),
        Me => ("GET", "/api/v1/me".into(), None),
        AccountList => ("GET", format!("/api/v1/accounts?org_id={}", s.sub), None),
        AccountRole => (
            "PUT",
            format!("/api/v1/accounts/{}/role", fresh_user(app, s.sub).await),
            Some(json!({"role": "user"})),
        ),
        AccountUnlock => ("POST", format!("/api/v1/accounts/{}/unlock", s.user), None),
        AccountPassword => (
            "POST",
            format!("/api/v1/accounts/{}/password", s.user),
            Some(json!({"password": format!("Reset-Pass-Word-{}", n())})),
        ),
        AccountTotpReset => (
            "POST",
            format!("/api/v1/accounts/{}/totp/disable", s.user),
            None,
        ),
        PolicyGet => ("GET", "/api/v1/security/policy".into(), None),
        PolicyPut => (
            "PUT",
            "/api/v1/security/policy".into(),
            Some(
                json!({"min_length": 12, "min_classes": 3, "max_age_days": 90, "history": 5, "lockout_threshold": 5, "lockout_minutes": 15}),
            ),
        ),
        AuditSearch => ("GET", "/api/v1/audit?limit=5".into(), None),
        AuditVerify => ("GET", "/api/v1/audit/verify".into(), None),
        MeetingList => ("GET", "/api/v1/meetings".into(), None),
        MeetingListScope => ("GET", "/api/v1/meetings?view=scope".into(), None),
        MeetingCreate => (
            "POST",
            "/api/v1/meetings".into(),
            Some(json!({"title": "新会", "starts_at_ms": T0 + 7_200_000, "org_id": s.sub})),
        ),
        MeetingGet => ("GET", format!("/api/v1/meetings/{}", s.meeting), None),
        MeetingUpdate => (
            "PATCH",
            format!("/api/v1/meetings/{}", s.meeting),
            Some(json!({"title": format!("改{}", n())})),
        ),
        MeetingCancel => (
            "POST",
            format!("/api/v1/meetings/{}/cancel", fresh_meeting(app, s).await),
            None,
        ),
        SigninStart => (
            "POST",
            format!("/api/v1/meetings/{}/signins", fresh_meeting(app, s).await),
            Some(json!({"deadline_ms": T0 + 600_000})),
        ),
        SigninGet => (
            "GET",
            format!("/api/v1/meetings/{}/signins/{}", s.meeting, s.signin),
            None,
        ),
        SigninEnd => {
            let m = fresh_meeting(app, s).await;
            let si = app
                .state
                .start_signin(m, s.owner, T0 + 600_000, true)
                .await
                .unwrap();
            (
                "POST",
                format!("/api/v1/meetings/{m}/signins/{}/end", si.id),
                None,
            )
        }
        SigninSubmit => (
            "POST",
            format!("/api/v1/meetings/{}/signins/{}/submit", s.meeting, s.signin),
            None,
        ),
        RecordingList => ("GET", "/api/v1/recordings".into(), None),
        RecordingGet => ("GET", format!("/api/v1/recordings/{}", s.recording), None),
        RecordingShare => (
            "PUT",
            format!("/api/v1/recordings/{}/shares", s.recording),
            Some(json!({"user_ids": [s.user]})),
        ),
        RecordingDelete => {
            let rec = app
                .state
                .register_recording(s.meeting, "临时")
                .await
                .unwrap();
            ("DELETE", format!("/api/v1/recordings/{}", rec.id), None)
        }
        SigninCsv => (
            "GET",
            format!("/api/v1/meetings/{}/signins/{}/csv", s.meeting, s.signin),
            None,
        ),
        SigninXlsx => (
            "GET",
            format!("/api/v1/meetings/{}/signins/{}/xlsx", s.meeting, s.signin),
            None,
        ),
    }
}

async fn role_matrix(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let sec = app.sec().await;
    let root = app.root_id();
    let a = app.org(&sys, root, "A").await;
    let a1 = app.org(&sys, a, "A1").await;
    let bo = app.org(&sys, root, "B").await;
    let b1 = app.org(&sys, bo, "B1").await;
    // Scoped admins live in A; the ordinary actor in A1; B has its own owner.
    let mut ids = vec![];
    for (name, role) in [
        ("sys_a", "system_admin"),
        ("sec_a", "security_admin"),
        ("aud_a", "audit_admin"),
    ] {
        let id = app.user(&sys, a, name, name, json!({})).await;
        app.ok(
            "PUT",
            &format!("/api/v1/accounts/{id}/role"),
            &sec,
            Some(json!({"role": role, "scope_org_id": a})),
        )
        .await;
        ids.push(id);
    }
    let user_a = app.user(&sys, a1, "user_a", "甲用户", json!({})).await;
    let user_b = app.user(&sys, b1, "user_b", "乙用户", json!({})).await;
    let mut sides = vec![];
    for (org, sub, owner) in [(a, a1, user_a), (bo, b1, user_b)] {
        let user = app
            .user(&sys, sub, &format!("target{}", n()), "目标", json!({}))
            .await;
        let terminal = app
            .state
            .create_terminal("室", sub, TerminalProtocol::Sip, "sip:r@x", "")
            .await
            .unwrap()
            .id;
        let meeting = app
            .state
            .create_meeting(owner, &draft(sub, owner))
            .await
            .unwrap()
            .id;
        let signin = app
            .state
            .start_signin(meeting, owner, T0 + 86_400_000, true)
            .await
            .unwrap()
            .id;
        let recording = app
            .state
            .register_recording(meeting, "录像")
            .await
            .unwrap()
            .id;
        sides.push(Side {
            org,
            sub,
            owner,
            user,
            terminal,
            meeting,
            signin,
            recording,
        });
    }
    let mut tokens = vec![];
    for who in ACTORS {
        let (user, pw) = match who {
            Who::SysA => ("sys_a", USER_PW),
            Who::SecA => ("sec_a", USER_PW),
            Who::AudA => ("aud_a", USER_PW),
            Who::UserA => ("user_a", USER_PW),
            Who::SysRoot => ("sysadmin", SYS_PW),
            Who::SecRoot => ("secadmin", SEC_PW),
            Who::AudRoot => ("auditadmin", AUD_PW),
        };
        tokens.push((who, user, app.login(user, pw).await));
    }
    let (_, doc) = app.call("GET", "/api/openapi.json", None, None).await;
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // Public (login, refresh) and own-account routes (password, second factor) are
        // outside the matrix: every account may call them, for itself only.
        if path.starts_with("/api/v1/auth/") || path.starts_with("/api/v1/me/") {
            continue;
        }
        documented += item.as_object().unwrap().len();
    }
    // `MeetingList` and `MeetingListScope` are two views of one operation.
    assert_eq!(
        documented,
        ENDPOINTS.len() - 1,
        "every documented operation needs a row in ENDPOINTS"
    );
    let mut failures = vec![];
    let mut checked = 0;
    for (ep, may) in ENDPOINTS {
        for (who, username, token) in &tokens {
            for (inside, side) in [(true, &sides[0]), (false, &sides[1])] {
                // Endpoints without a target have no "outside": both calls are the same.
                let scoped = !matches!(
                    ep,
                    Ep::Me
                        | Ep::PolicyGet
                        | Ep::PolicyPut
                        | Ep::AuditSearch
                        | Ep::AuditVerify
                        | Ep::MeetingList
                        | Ep::MeetingListScope
                        | Ep::RecordingList
                );
                let want = expected(may, *who, inside || !scoped);
                let (method, path, body) = request(&app, ep, side).await;
                let before = app.count_denied(username).await;
                let (status, v) = match (method, body) {
                    ("CSV", Some(Value::String(csv))) => {
                        app.call_csv(&path, Some(token), &csv).await
                    }
                    (m, b) => app.call(m, &path, Some(token), b).await,
                };
                let after = app.count_denied(username).await;
                checked += 1;
                let ok = if want {
                    status == StatusCode::OK
                } else {
                    status == StatusCode::FORBIDDEN
                        && v["code"] == "forbidden"
                        && after == before + 1
                };
                if !ok {
                    failures.push(format!(
                        "{ep:?} {who:?} inside={inside}: want {} got {status} {v} (denials {before}->{after})",
                        if want { "200" } else { "403+audit" }
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, ENDPOINTS.len() * 7 * 2);
    let _ = ids;
}
