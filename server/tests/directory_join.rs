//! Scheduled meetings: signalling asks the admin plane who may join, in which role, and
//! records roll-call sign-ins; ad-hoc meetings keep working beside them.

use serde_json::{Value, json};

mod common;
use common::{connect, expect, http_ok, reply, send, start_server};

const SYS_PW: &str = "Sys-Admin-Pass-2026";
const USER_PW: &str = "Host-Chair-Pass-77";

#[allow(clippy::disallowed_methods)] // the server runs on the wall clock; so must the meeting
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn login(addr: std::net::SocketAddr, user: &str, pw: &str) -> Value {
    http_ok(
        addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": user, "password": pw})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_meeting_admission_roles_and_sign_in() {
    let srv = start_server(&[("HUITONG_ADMIN__BOOTSTRAP__SYSTEM_ADMIN_PASSWORD", SYS_PW)]);
    let a = srv.http;
    let sys = login(a, "sysadmin", SYS_PW).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let me = http_ok(a, "GET", "/api/v1/me", Some(&sys), None).await;
    let root = me["org_id"].as_i64().expect("org_id");

    // A directory user who will host; the one-time password is changed first.
    let user = http_ok(
        a,
        "POST",
        "/api/v1/users",
        Some(&sys),
        Some(json!({"username": "zhang", "name": "张主持", "org_id": root, "password": "Temp-Pass-Word-5"})),
    )
    .await;
    let uid = user["id"].as_i64().unwrap();
    let first = login(a, "zhang", "Temp-Pass-Word-5").await;
    assert_eq!(first["must_change_password"], true);
    http_ok(
        a,
        "POST",
        "/api/v1/me/password",
        first["access_token"].as_str(),
        Some(json!({"old_password": "Temp-Pass-Word-5", "new_password": USER_PW})),
    )
    .await;
    let host_token = login(a, "zhang", USER_PW).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let m = http_ok(
        a,
        "POST",
        "/api/v1/meetings",
        Some(&sys),
        Some(
            json!({"title": "党建例会", "starts_at_ms": now_ms(), "duration_minutes": null,
                    "host_id": uid, "passcode": "246810"}),
        ),
    )
    .await;
    let number = m["number"].as_str().unwrap().to_string();
    let mid = m["id"].as_i64().unwrap();

    // Wrong passcode is refused by the directory's rule.
    let mut x = connect(a).await;
    send(
        &mut x,
        json!({"type": "join", "v": 1, "meeting": number, "passcode": "000000", "name": "x"}),
    )
    .await;
    assert_eq!(reply(&mut x, "joined").await["code"], "wrong_passcode");

    // A guest with the passcode joins first, but the chair waits for the scheduled host.
    let mut guest = connect(a).await;
    send(
        &mut guest,
        json!({"type": "join", "v": 1, "meeting": number, "passcode": "246810", "name": "来宾"}),
    )
    .await;
    let j = reply(&mut guest, "joined").await;
    assert_eq!(j["role"], "participant", "{j}");
    send(
        &mut guest,
        json!({"type": "host", "action": "mute_all", "id": 1}),
    )
    .await;
    assert_eq!(reply(&mut guest, "ok").await["code"], "not_host");

    // The host joins with the token alone; the directory's name replaces the typed one.
    let mut host = connect(a).await;
    send(
        &mut host,
        json!({"type": "join", "v": 1, "meeting": number, "token": host_token, "name": "whoever"}),
    )
    .await;
    let j = reply(&mut host, "joined").await;
    assert_eq!(j["role"], "host", "{j}");
    let me_wire = j["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == j["participant"])
        .unwrap()
        .clone();
    assert_eq!(me_wire["name"], "张主持");

    // No sign-in is open yet.
    send(&mut guest, json!({"type": "sign_in", "id": 2})).await;
    assert_eq!(
        reply(&mut guest, "signed_in").await["code"],
        "no_open_signin"
    );

    let s = http_ok(
        a,
        "POST",
        &format!("/api/v1/meetings/{mid}/signins"),
        Some(&host_token),
        Some(json!({"deadline_ms": now_ms() + 600_000})),
    )
    .await;
    let sid = s["id"].as_i64().unwrap();
    send(&mut guest, json!({"type": "sign_in", "id": 3})).await;
    let r = reply(&mut guest, "signed_in").await;
    assert_eq!(
        (r["already"].as_bool(), r["late"].as_bool()),
        (Some(false), Some(false)),
        "{r}"
    );
    send(&mut guest, json!({"type": "sign_in", "id": 4})).await;
    assert_eq!(
        reply(&mut guest, "signed_in").await["already"],
        true,
        "sign-in is idempotent"
    );
    send(&mut host, json!({"type": "sign_in", "id": 5})).await;
    assert_eq!(reply(&mut host, "signed_in").await["already"], false);

    let results = http_ok(
        a,
        "GET",
        &format!("/api/v1/meetings/{mid}/signins/{sid}"),
        Some(&host_token),
        None,
    )
    .await;
    let text = results.to_string();
    assert!(text.contains("张主持") && text.contains("来宾"), "{text}");

    // A cancelled meeting admits no one; ad-hoc meetings still work beside the directory.
    http_ok(
        a,
        "POST",
        &format!("/api/v1/meetings/{mid}/cancel"),
        Some(&sys),
        None,
    )
    .await;
    let mut late = connect(a).await;
    send(
        &mut late,
        json!({"type": "join", "v": 1, "meeting": number, "passcode": "246810", "name": "y"}),
    )
    .await;
    assert_eq!(
        reply(&mut late, "joined").await["code"],
        "meeting_cancelled"
    );
    let mut adhoc = connect(a).await;
    send(
        &mut adhoc,
        json!({"type": "join", "v": 1, "meeting": "5551234", "name": "z", "create": true}),
    )
    .await;
    assert_eq!(expect(&mut adhoc, "joined").await["role"], "host");
}
