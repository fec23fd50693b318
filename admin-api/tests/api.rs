//! End-to-end tests of the admin API on SQLite and (when configured) PostgreSQL.

mod common;

use admin_api::{JoinDecision, JoinRole, SignInOutcome, SignInParticipant};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

both_backends!(
    bootstrap_generates_one_time_passwords,
    concurrent_writes_keep_signin_idempotent_and_chain_valid,
    recording_catalogue_and_shares,
    csv_import_reports_rows,
    storage_bootstrap_and_reconnect,
    org_tree_moves_without_cycles,
    users_terminals_and_search,
    auth_lockout_expiry_refresh_and_revocation,
    audit_chain_detects_tampering,
    hidden_phone_never_reaches_participants,
    meetings_schedule_conflicts_and_join,
    signin_counts_live_and_is_idempotent,
    errors_are_json_and_never_500,
);

async fn storage_bootstrap_and_reconnect(b: Backend) {
    let app = TestApp::new(b).await;
    let root = app.root_id();
    assert!(root > 0);
    // The three separated admins exist and can log in.
    let sys = app.sys().await;
    app.sec().await;
    app.aud().await;
    let me = app.ok("GET", "/api/v1/me", &sys, None).await;
    assert_eq!(me["role"], "system_admin");
    if app.state.db_kind() == admin_api::db::DbKind::Sqlite {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(app.state.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert!(app.config.data_dir.join("huitong.db").exists());
    }
    // Reconnecting to the same database migrates nothing and bootstraps nothing.
    let mut cfg = app.config.clone();
    cfg.bootstrap.system_admin_password = "Another-Pass-77".into();
    if app.state.db_kind() == admin_api::db::DbKind::Postgres {
        cfg.database_url = app.config.database_url.clone();
    }
    let again = admin_api::AdminState::connect(
        cfg,
        app.clock.clone(),
        std::sync::Arc::new(admin_api::SeededEntropy::new(99)),
    )
    .await
    .unwrap();
    assert_eq!(again.root_path(), app.state.root_path());
    let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(admins, 3);
    // The first password still works; the new config did not overwrite it.
    app.sys().await;
}

async fn org_tree_moves_without_cycles(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let city = app.org(&sys, root, "市委组织部").await;
    let county = app.org(&sys, city, "达拉特旗").await;
    let town = app.org(&sys, county, "树林召镇").await;
    let village = app.org(&sys, town, "ᠮᠣᠩᠭᠣᠯ村").await;
    let other = app.org(&sys, root, "其他").await;
    // Same name twice under one parent is a conflict.
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/orgs",
            Some(&sys),
            Some(json!({"parent_id": city, "name": "达拉特旗"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    // Moving a node under its own descendant would make a cycle.
    let (s, v) = app
        .call(
            "POST",
            &format!("/api/v1/orgs/{county}/move"),
            Some(&sys),
            Some(json!({"new_parent_id": village})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("org_cycle"))
    );
    let (s, _) = app
        .call(
            "POST",
            &format!("/api/v1/orgs/{county}/move"),
            Some(&sys),
            Some(json!({"new_parent_id": county})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let villager = app.user(&sys, village, "bayar", "巴雅尔", json!({})).await;
    // Move the county subtree under "other": every descendant's path follows.
    let moved = app
        .ok(
            "POST",
            &format!("/api/v1/orgs/{county}/move"),
            &sys,
            Some(json!({"new_parent_id": other})),
        )
        .await;
    assert_eq!(moved["path"], format!("/{root}/{other}/{county}/"));
    let v = app
        .ok("GET", &format!("/api/v1/orgs/{village}"), &sys, None)
        .await;
    assert_eq!(
        v["path"],
        format!("/{root}/{other}/{county}/{town}/{village}/")
    );
    assert_eq!(v["depth"], 4);
    let kids = app
        .ok(
            "GET",
            &format!("/api/v1/orgs?parent_id={other}"),
            &sys,
            None,
        )
        .await;
    assert_eq!(kids.as_array().unwrap().len(), 1);
    // Its people moved with it: listed under the new parent, not under the old one.
    let under_other = app
        .ok("GET", &format!("/api/v1/users?org_id={other}"), &sys, None)
        .await;
    assert_eq!(under_other.as_array().unwrap().len(), 1);
    assert_eq!(under_other[0]["id"], villager);
    assert_eq!(
        under_other[0]["org_path"],
        format!("/{root}/{other}/{county}/{town}/{village}/")
    );
    let under_city = app
        .ok("GET", &format!("/api/v1/users?org_id={city}"), &sys, None)
        .await;
    assert_eq!(under_city.as_array().unwrap().len(), 0);
    // A non-empty org cannot be deleted; an empty one can; the root cannot move.
    let (s, v) = app
        .call("DELETE", &format!("/api/v1/orgs/{town}"), Some(&sys), None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("org_not_empty"))
    );
    // The village still has its member; once they move out it can go.
    let (s, v) = app
        .call(
            "DELETE",
            &format!("/api/v1/orgs/{village}"),
            Some(&sys),
            None,
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("org_not_empty"))
    );
    app.ok(
        "PATCH",
        &format!("/api/v1/users/{villager}"),
        &sys,
        Some(json!({"org_id": town})),
    )
    .await;
    app.ok("DELETE", &format!("/api/v1/orgs/{village}"), &sys, None)
        .await;
    let (s, _) = app
        .call("GET", &format!("/api/v1/orgs/{village}"), Some(&sys), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The root is the bootstrap admin's own scope boundary: not editable.
    let (s, _) = app
        .call(
            "POST",
            &format!("/api/v1/orgs/{root}/move"),
            Some(&sys),
            Some(json!({"new_parent_id": city})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

async fn users_terminals_and_search(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let a = app.org(&sys, root, "甲").await;
    let a1 = app.org(&sys, a, "甲一").await;
    let u = app
        .user(
            &sys,
            a1,
            "zhang.sf",
            "张三丰",
            json!({"phone": "13800001111", "title": "书记", "tags": ["党员", "委员"]}),
        )
        .await;
    app.user(&sys, a, "bat", "Батбаяр ᠪᠠᠲᠤ", json!({})).await;
    // Pinyin initials, name fragments, phone fragments; subtree vs. one org.
    let hits = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={a}&q=zsf"),
            &sys,
            None,
        )
        .await;
    assert_eq!(hits[0]["id"], u);
    assert_eq!(hits[0]["tags"], json!(["党员", "委员"]));
    let hits = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={a}&q=%E4%B8%89"),
            &sys,
            None,
        )
        .await; // 三
    assert_eq!(hits.as_array().unwrap().len(), 1);
    let hits = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={a}&q=0000111"),
            &sys,
            None,
        )
        .await;
    assert_eq!(hits.as_array().unwrap().len(), 1);
    let hits = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={a}&subtree=false"),
            &sys,
            None,
        )
        .await;
    assert_eq!(hits.as_array().unwrap().len(), 1);
    assert_eq!(hits[0]["name"], "Батбаяр ᠪᠠᠲᠤ");
    // The subtree listing: the org and everything below it, in name order, paged, and
    // nothing from a sibling subtree.
    let b_org = app.org(&sys, root, "乙").await;
    app.user(&sys, b_org, "li.si", "李四", json!({})).await;
    let hits = app
        .ok("GET", &format!("/api/v1/users?org_id={a}"), &sys, None)
        .await;
    let names: Vec<&str> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Батбаяр ᠪᠠᠲᠤ", "张三丰"]);
    let hits = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={a}&limit=1&offset=1"),
            &sys,
            None,
        )
        .await;
    assert_eq!(hits.as_array().unwrap().len(), 1);
    assert_eq!(hits[0]["id"], u);
    // Tree order (the default) groups by organisation, the org's own members first;
    // name order sorts across the subtree (齐 U+9F50 sorts after 张 U+5F20).
    app.user(&sys, a, "qi.bs", "齐白石", json!({})).await;
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let tree = app
        .ok("GET", &format!("/api/v1/users?org_id={a}"), &sys, None)
        .await;
    assert_eq!(names(&tree), ["Батбаяр ᠪᠠᠲᠤ", "齐白石", "张三丰"]);
    let by_name = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={a}&order=name"),
            &sys,
            None,
        )
        .await;
    assert_eq!(names(&by_name), ["Батбаяр ᠪᠠᠲᠤ", "张三丰", "齐白石"]);
    let page2 = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={a}&limit=2&offset=2"),
            &sys,
            None,
        )
        .await;
    assert_eq!(names(&page2), ["张三丰"]);
    let (s, _) = app
        .call(
            "GET",
            &format!("/api/v1/users?org_id={a}&order=shoe_size"),
            Some(&sys),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A user moved to another organisation is listed under the new one only.
    let moved = app
        .ok(
            "PATCH",
            &format!("/api/v1/users/{u}"),
            &sys,
            Some(json!({"org_id": b_org})),
        )
        .await;
    assert_eq!(moved["org_path"], format!("/{root}/{b_org}/"));
    let in_b = app
        .ok("GET", &format!("/api/v1/users?org_id={b_org}"), &sys, None)
        .await;
    assert_eq!(names(&in_b), ["张三丰", "李四"]);
    let in_a = app
        .ok("GET", &format!("/api/v1/users?org_id={a}"), &sys, None)
        .await;
    assert_eq!(names(&in_a), ["Батбаяр ᠪᠠᠲᠤ", "齐白石"]);
    app.ok(
        "PATCH",
        &format!("/api/v1/users/{u}"),
        &sys,
        Some(json!({"org_id": a1})),
    )
    .await;
    // SQL-ish and LIKE-ish input is just text.
    for q in ["' OR 1=1 --", "%", "_", "\\", "'; DROP TABLE users; --"] {
        let path = format!("/api/v1/users?org_id={a}&q={}", urlencode(q));
        let hits = app.ok("GET", &path, &sys, None).await;
        assert_eq!(hits.as_array().unwrap().len(), 0, "{q}");
    }
    // Duplicate user names conflict; bad fields are 400 with a code.
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&sys),
            Some(json!({"username": "zhang.sf", "name": "x", "org_id": a})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&sys),
            Some(json!({"username": "a b", "name": "x", "org_id": a})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_field"))
    );
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&sys),
            Some(json!({"username": "nul", "name": "a\u{0}b", "org_id": a})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/users",
            Some(&sys),
            Some(json!({"username": "weak", "name": "x", "org_id": a, "password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Update: move org, change title, disable.
    let v = app
        .ok(
            "PATCH",
            &format!("/api/v1/users/{u}"),
            &sys,
            Some(json!({"org_id": a, "title": "主任", "phone": null})),
        )
        .await;
    assert_eq!(
        (
            v["org_id"].as_i64(),
            v["title"].as_str(),
            v["phone"].is_null()
        ),
        (Some(a), Some("主任"), true)
    );
    // Terminals.
    let t = app
        .ok("POST", "/api/v1/terminals", &sys, Some(json!({"name": "会议室 1", "org_id": a1, "protocol": "sip", "address": "sip:room1@10.0.0.5", "capabilities": ["h264", "1080p"]})))
        .await;
    let tid = t["id"].as_i64().unwrap();
    let list = app
        .ok(
            "GET",
            &format!("/api/v1/terminals?org_id={a}&q=%E4%BC%9A"),
            &sys,
            None,
        )
        .await;
    assert_eq!(list[0]["id"], tid);
    let t = app
        .ok(
            "PATCH",
            &format!("/api/v1/terminals/{tid}"),
            &sys,
            Some(json!({"protocol": "h323"})),
        )
        .await;
    assert_eq!(t["protocol"], "h323");
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/terminals",
            Some(&sys),
            Some(json!({"name": "x", "org_id": a1, "protocol": "carrier-pigeon", "address": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    app.ok("DELETE", &format!("/api/v1/terminals/{tid}"), &sys, None)
        .await;
    let (s, _) = app
        .call("GET", &format!("/api/v1/terminals/{tid}"), Some(&sys), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn auth_lockout_expiry_refresh_and_revocation(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let uid = app.user(&sys, root, "li", "李雷", json!({})).await;
    // Five wrong passwords lock the account, even for the right password.
    for _ in 0..5 {
        let (s, v) = app
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"username": "li", "password": "nope"})),
            )
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
        );
    }
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "li", "password": USER_PW})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("account_locked"))
    );
    // The lock expires by the (mock) clock...
    app.clock.advance(Duration::from_secs(16 * 60));
    app.login("li", USER_PW).await;
    let sec = app.sec().await;
    // ...or the security admin lifts it.
    for _ in 0..5 {
        app.call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "li", "password": "nope"})),
        )
        .await;
    }
    app.ok(
        "POST",
        &format!("/api/v1/accounts/{uid}/unlock"),
        &sec,
        None,
    )
    .await;
    // Unknown user names fail exactly like wrong passwords.
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "ghost", "password": "x"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );

    // Access tokens expire by the injected clock; refresh rotates; reuse revokes.
    let (_, pair) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "li", "password": USER_PW})),
        )
        .await;
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let refresh = pair["refresh_token"].as_str().unwrap().to_owned();
    app.ok("GET", "/api/v1/me", &access, None).await;
    app.clock.advance(Duration::from_secs(15 * 60 + 1));
    let (s, v) = app.call("GET", "/api/v1/me", Some(&access), None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_expired"))
    );
    let pair2 = app
        .ok(
            "POST",
            "/api/v1/auth/refresh",
            "",
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    let access2 = pair2["access_token"].as_str().unwrap().to_owned();
    app.ok("GET", "/api/v1/me", &access2, None).await;
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );
    // The replay revoked the whole session: the new access token is dead too.
    let (s, _) = app.call("GET", "/api/v1/me", Some(&access2), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Logout revokes.
    let t = app.login("li", USER_PW).await;
    app.ok("POST", "/api/v1/auth/logout", &t, None).await;
    let (s, v) = app.call("GET", "/api/v1/me", Some(&t), None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );
    // A forged token is refused.
    let (s, _) = app
        .call(
            "GET",
            "/api/v1/me",
            Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.AAAA"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let sec = app.sec().await;
    // A reset gives a one-time password: only own-account routes work until changed,
    // and history forbids reusing it.
    app.ok(
        "POST",
        &format!("/api/v1/accounts/{uid}/password"),
        &sec,
        Some(json!({"password": "Temp-Pass-Word-5"})),
    )
    .await;
    let (_, pair) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "li", "password": "Temp-Pass-Word-5"})),
        )
        .await;
    assert_eq!(pair["must_change_password"], true);
    let t = pair["access_token"].as_str().unwrap();
    let (s, v) = app
        .call("GET", "/api/v1/directory/users", Some(t), None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("password_change_required"))
    );
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/me/password",
            Some(t),
            Some(json!({"old_password": "Temp-Pass-Word-5", "new_password": USER_PW})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("password_policy")),
        "history"
    );
    app.ok(
        "POST",
        "/api/v1/me/password",
        t,
        Some(json!({"old_password": "Temp-Pass-Word-5", "new_password": "Brand-New-Pass-8"})),
    )
    .await;
    app.ok("GET", "/api/v1/directory/users", t, None).await;
    // Every login attempt is in the audit log.
    let aud = app.aud().await;
    let logins = app
        .ok(
            "GET",
            "/api/v1/audit?action=login&actor=li&limit=500",
            &aud,
            None,
        )
        .await;
    let results: Vec<&str> = logins
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert!(
        results.iter().filter(|r| **r == "failed").count() >= 10,
        "{results:?}"
    );
    assert!(results.contains(&"denied") && results.contains(&"ok"));
    // The security admin edits the policy; nobody else may.
    let sec = app.sec().await;
    let p = app.ok("GET", "/api/v1/security/policy", &sec, None).await;
    assert_eq!(p["min_length"], 12);
    let (s, _) = app.call("PUT", "/api/v1/security/policy", Some(&sec), Some(json!({"min_length": 2, "min_classes": 1, "max_age_days": 0, "history": 0, "lockout_threshold": 3, "lockout_minutes": 5}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    app.ok("PUT", "/api/v1/security/policy", &sec, Some(json!({"min_length": 14, "min_classes": 4, "max_age_days": 90, "history": 0, "lockout_threshold": 3, "lockout_minutes": 5}))).await;
    let sys = app.sys().await;
    let (s, _) = app
        .call("PUT", "/api/v1/security/policy", Some(&sys), Some(p))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Disabling a user ends their sessions and refuses login.
    let t = app.login("li", "Brand-New-Pass-8").await;
    app.ok(
        "PATCH",
        &format!("/api/v1/users/{uid}"),
        &sys,
        Some(json!({"status": "disabled"})),
    )
    .await;
    let (s, _) = app.call("GET", "/api/v1/me", Some(&t), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "li", "password": "Brand-New-Pass-8"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("account_disabled"))
    );
    app.ok(
        "PATCH",
        &format!("/api/v1/users/{uid}"),
        &sys,
        Some(json!({"status": "active"})),
    )
    .await;
    // Passwords expire after max_age_days.
    app.clock.advance(Duration::from_secs(91 * 86_400));
    let (_, pair) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "li", "password": "Brand-New-Pass-8"})),
        )
        .await;
    assert_eq!(pair["must_change_password"], true);
}

async fn audit_chain_detects_tampering(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    for i in 0..5 {
        app.org(&sys, root, &format!("org{i}")).await;
    }
    let aud = app.aud().await;
    let v = app.ok("GET", "/api/v1/audit/verify", &aud, None).await;
    assert_eq!(v["ok"], true);
    let n = v["entries"].as_i64().unwrap();
    assert!(n >= 8, "bootstrap + logins + creates: {n}");
    let entries = app
        .ok("GET", "/api/v1/audit?action=org_create", &aud, None)
        .await;
    assert_eq!(entries.as_array().unwrap().len(), 5);
    assert_eq!(entries[0]["actor_name"], "sysadmin");
    // Updates are refused by the database itself.
    let upd = sqlx::query("UPDATE audit_log SET detail = 'x' WHERE seq = 2")
        .execute(app.state.pool())
        .await;
    assert!(upd.is_err(), "audit_log must be append-only");
    // Deleting an entry from the middle breaks the chain at the next one.
    sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(app.state.pool())
        .await
        .unwrap();
    let v = app.ok("GET", "/api/v1/audit/verify", &aud, None).await;
    assert_eq!(
        (v["ok"].as_bool(), v["broken_at"].as_i64()),
        (Some(false), Some(5))
    );
    // Retention pruning removes the oldest entries and keeps a verifiable chain.
    let app = TestApp::new(match app.state.db_kind() {
        admin_api::db::DbKind::Sqlite => Backend::Sqlite,
        admin_api::db::DbKind::Postgres => Backend::postgres().unwrap(),
    })
    .await;
    app.sys().await;
    // Passwords must not expire while the clock jumps past the retention period.
    let sec = app.sec().await;
    app.ok("PUT", "/api/v1/security/policy", &sec, Some(json!({"min_length": 12, "min_classes": 3, "max_age_days": 0, "history": 5, "lockout_threshold": 5, "lockout_minutes": 15}))).await;
    app.clock.advance(Duration::from_secs(200 * 86_400));
    let aud = app.aud().await;
    let removed = app.state.prune_audit().await.unwrap();
    assert!(removed >= 4);
    let v = app.ok("GET", "/api/v1/audit/verify", &aud, None).await;
    assert_eq!(v["ok"], true, "{v}");
    // The system admin cannot read the log.
    let sys = app.sys().await;
    let (s, _) = app.call("GET", "/api/v1/audit", Some(&sys), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

const HIDDEN: &str = "13912345678";
const VISIBLE: &str = "13700000000";

async fn hidden_phone_never_reaches_participants(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let a = app.org(&sys, root, "甲").await;
    let bb = app.org(&sys, root, "乙").await;
    let secret = app
        .user(
            &sys,
            a,
            "leader",
            "王书记",
            json!({"phone": HIDDEN, "phone_hidden": true}),
        )
        .await;
    let open = app
        .user(&sys, a, "clerk", "赵干事", json!({"phone": VISIBLE}))
        .await;
    let other = app.user(&sys, bb, "other", "钱某", json!({})).await;
    let term = app
        .ok(
            "POST",
            "/api/v1/terminals",
            &sys,
            Some(json!({"name": "甲会议室", "org_id": a, "protocol": "sip", "address": "sip:a@x"})),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    // An admin in scope sees it.
    let v = app
        .ok("GET", &format!("/api/v1/users/{secret}"), &sys, None)
        .await;
    assert_eq!(v["phone"], HIDDEN);
    // A subtree admin of 乙 cannot even read the user.
    let sec = app.sec().await;
    app.ok(
        "PUT",
        &format!("/api/v1/accounts/{other}/role"),
        &sec,
        Some(json!({"role": "system_admin", "scope_org_id": bb})),
    )
    .await;
    let other_t = app.login("other", USER_PW).await;
    let (s, v) = app
        .call(
            "GET",
            &format!("/api/v1/users/{secret}"),
            Some(&other_t),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut outputs: Vec<String> = vec![v.to_string()];
    let (_, v) = app
        .call(
            "GET",
            &format!("/api/v1/users?org_id={a}&q={HIDDEN}"),
            Some(&other_t),
            None,
        )
        .await;
    outputs.push(v.to_string());

    // Participant-facing outputs: directory, search by the number, meeting, roster,
    // sign-in results and CSV, join decisions, the security admin's account view, the
    // audit log.
    let clerk = app.login("clerk", USER_PW).await;
    let dir = app.ok("GET", "/api/v1/directory/users", &clerk, None).await;
    assert!(
        dir.to_string().contains(VISIBLE),
        "visible numbers are shown"
    );
    assert!(
        dir.as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == secret && e["phone"].is_null())
    );
    outputs.push(dir.to_string());
    let probe = app
        .ok(
            "GET",
            &format!("/api/v1/directory/users?q={}", &HIDDEN[3..9]),
            &clerk,
            None,
        )
        .await;
    assert_eq!(
        probe.as_array().unwrap().len(),
        0,
        "hidden numbers are not searchable"
    );
    outputs.push(probe.to_string());
    let m = app
        .ok("POST", "/api/v1/meetings", &clerk, Some(json!({
            "title": "党课", "starts_at_ms": T0 + 3_600_000, "duration_minutes": 60,
            "invitees": {"users": [secret], "terminals": [term], "orgs": [{"id": a, "subtree": true}]}
        })))
        .await;
    outputs.push(m.to_string());
    let mid = m["id"].as_i64().unwrap();
    let number = m["number"].as_str().unwrap().to_owned();
    let s = app
        .ok(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins"),
            &clerk,
            Some(json!({"deadline_ms": T0 + 600_000})),
        )
        .await;
    let sid = s["id"].as_i64().unwrap();
    let leader = app.login("leader", USER_PW).await;
    outputs.push(
        app.ok(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins/{sid}/submit"),
            &leader,
            None,
        )
        .await
        .to_string(),
    );
    outputs.push(
        app.ok("GET", &format!("/api/v1/meetings/{mid}"), &leader, None)
            .await
            .to_string(),
    );
    outputs.push(
        app.ok("GET", "/api/v1/meetings", &leader, None)
            .await
            .to_string(),
    );
    outputs.push(
        app.ok(
            "GET",
            &format!("/api/v1/meetings/{mid}/signins/{sid}"),
            &clerk,
            None,
        )
        .await
        .to_string(),
    );
    outputs.push(
        app.ok(
            "GET",
            &format!("/api/v1/meetings/{mid}/signins/{sid}/csv"),
            &clerk,
            None,
        )
        .await
        .to_string(),
    );
    outputs.push(format!(
        "{:?}",
        app.state.check_join(&number, Some(&leader)).await.unwrap()
    ));
    outputs.push(format!(
        "{:?}",
        app.state
            .record_sign_in(&number, SignInParticipant::User(secret), 1)
            .await
            .unwrap()
    ));
    outputs.push(
        app.ok("GET", "/api/v1/accounts?q=13912", &sec, None)
            .await
            .to_string(),
    );
    outputs.push(
        app.ok("GET", &format!("/api/v1/accounts?org_id={a}"), &sec, None)
            .await
            .to_string(),
    );
    outputs.push(app.ok("GET", "/api/v1/me", &clerk, None).await.to_string());
    let aud = app.aud().await;
    outputs.push(
        app.ok("GET", "/api/v1/audit?limit=500", &aud, None)
            .await
            .to_string(),
    );
    // Changing the number is audited without the number.
    app.ok(
        "PATCH",
        &format!("/api/v1/users/{secret}"),
        &sys,
        Some(json!({"phone": HIDDEN, "phone_hidden": true})),
    )
    .await;
    outputs.push(
        app.ok("GET", "/api/v1/audit?limit=500", &aud, None)
            .await
            .to_string(),
    );
    let all_audit: Vec<String> = sqlx::query_scalar("SELECT detail FROM audit_log")
        .fetch_all(app.state.pool())
        .await
        .unwrap();
    outputs.extend(all_audit);
    for (i, o) in outputs.iter().enumerate() {
        assert!(
            !o.contains(HIDDEN),
            "output {i} leaks the hidden number: {o}"
        );
        assert!(
            !o.contains(&HIDDEN[3..]),
            "output {i} leaks part of the hidden number"
        );
    }
    let _ = open;
}

async fn meetings_schedule_conflicts_and_join(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let a = app.org(&sys, root, "甲").await;
    let a1 = app.org(&sys, a, "甲一").await;
    let host = app.user(&sys, a, "host", "主持人", json!({})).await;
    let member = app.user(&sys, a1, "member", "成员", json!({})).await;
    let outsider = app.user(&sys, root, "outsider", "外人", json!({})).await;
    let room = app
        .ok(
            "POST",
            "/api/v1/terminals",
            &sys,
            Some(json!({"name": "room", "org_id": a, "protocol": "sip", "address": "sip:r@x"})),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let host_t = app.login("host", USER_PW).await;
    let m = app
        .ok("POST", "/api/v1/meetings", &host_t, Some(json!({
            "title": "周例会", "starts_at_ms": T0 + 86_400_000, "duration_minutes": 90,
            "recurrence": {"frequency": "weekly", "interval": 1, "count": 4},
            "passcode": "2468", "invitees": {"terminals": [room], "orgs": [{"id": a, "subtree": true}]}
        })))
        .await;
    let number = m["number"].as_str().unwrap().to_owned();
    assert_eq!(number.len(), 9);
    assert!(number.bytes().all(|c| c.is_ascii_digit()) && !number.starts_with('0'));
    let mid = m["id"].as_i64().unwrap();
    assert_eq!(m["host_id"], host);
    // The room is booked in week 3: a clashing meeting is refused, a free slot is fine.
    let clash = json!({"title": "x", "starts_at_ms": T0 + 15 * 86_400_000 + 1_800_000, "duration_minutes": 30, "invitees": {"terminals": [room]}});
    let (s, v) = app
        .call("POST", "/api/v1/meetings", Some(&host_t), Some(clash))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("terminal_busy")),
        "{v}"
    );
    let free = app.ok("POST", "/api/v1/meetings", &host_t, Some(json!({"title": "y", "starts_at_ms": T0 + 2 * 86_400_000, "invitees": {"terminals": [room]}}))).await;
    assert!(free["duration_minutes"].is_null(), "no time limit");
    // Invalid input.
    for bad in [
        json!({"title": "", "starts_at_ms": T0}),
        json!({"title": "t", "starts_at_ms": T0, "passcode": "12ab"}),
        json!({"title": "t", "starts_at_ms": T0, "duration_minutes": 0}),
        json!({"title": "t", "starts_at_ms": -5}),
        json!({"title": "t", "starts_at_ms": T0, "invitees": {"users": [424242]}}),
        json!({"title": "t", "starts_at_ms": T0, "recurrence": {"frequency": "daily", "interval": 0, "count": 3}}),
    ] {
        let (s, v) = app
            .call("POST", "/api/v1/meetings", Some(&host_t), Some(bad.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {v}");
    }
    // Invitees through the org subtree see the meeting; outsiders do not.
    let member_t = app.login("member", USER_PW).await;
    let mine = app.ok("GET", "/api/v1/meetings", &member_t, None).await;
    assert!(mine.as_array().unwrap().iter().any(|x| x["id"] == mid));
    let out_t = app.login("outsider", USER_PW).await;
    let (s, _) = app
        .call(
            "GET",
            &format!("/api/v1/meetings/{mid}"),
            Some(&out_t),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .call(
            "PATCH",
            &format!("/api/v1/meetings/{mid}"),
            Some(&member_t),
            Some(json!({"title": "hijack"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Modify: co-host, lock, move time.
    let v = app
        .ok(
            "PATCH",
            &format!("/api/v1/meetings/{mid}"),
            &host_t,
            Some(json!({"cohost_ids": [member], "locked": true, "title": "周例会（改）"})),
        )
        .await;
    assert_eq!(v["cohost_ids"], json!([member]));
    // Join decisions.
    let st = &app.state;
    assert_eq!(
        st.check_join("000000000", None).await.unwrap(),
        JoinDecision::UnknownMeeting
    );
    assert_eq!(
        st.check_join("abc", None).await.unwrap(),
        JoinDecision::UnknownMeeting
    );
    assert_eq!(
        st.check_join(&number, Some("1111")).await.unwrap(),
        JoinDecision::WrongPasscode
    );
    assert_eq!(
        st.check_join(&number, Some("2468")).await.unwrap(),
        JoinDecision::Locked
    );
    match st.check_join(&number, Some(&host_t)).await.unwrap() {
        JoinDecision::Allowed { role, identity, .. } => {
            assert_eq!(role, JoinRole::Host);
            assert_eq!(identity.unwrap().user_id, host);
        }
        other => panic!("{other:?}"),
    }
    match st.check_join(&number, Some(&member_t)).await.unwrap() {
        JoinDecision::Allowed { role, .. } => assert_eq!(role, JoinRole::CoHost),
        other => panic!("{other:?}"),
    }
    app.ok(
        "PATCH",
        &format!("/api/v1/meetings/{mid}"),
        &host_t,
        Some(json!({"locked": false, "directory_only": true})),
    )
    .await;
    assert_eq!(
        st.check_join(&number, Some("2468")).await.unwrap(),
        JoinDecision::DirectoryOnly
    );
    // An outsider with a token still needs the passcode.
    assert_eq!(
        st.check_join(&number, Some(&out_t)).await.unwrap(),
        JoinDecision::WrongPasscode
    );
    app.ok(
        "PATCH",
        &format!("/api/v1/meetings/{mid}"),
        &host_t,
        Some(json!({"directory_only": false, "passcode": null})),
    )
    .await;
    assert!(matches!(
        st.check_join(&number, None).await.unwrap(),
        JoinDecision::Allowed {
            role: JoinRole::Participant,
            identity: None,
            ..
        }
    ));
    // Cancel.
    app.ok(
        "POST",
        &format!("/api/v1/meetings/{mid}/cancel"),
        &host_t,
        None,
    )
    .await;
    assert_eq!(
        st.check_join(&number, None).await.unwrap(),
        JoinDecision::Cancelled
    );
    // The cancelled meeting no longer books the room.
    let (s, _) = app.call("POST", "/api/v1/meetings", Some(&host_t), Some(json!({"title": "x", "starts_at_ms": T0 + 15 * 86_400_000 + 1_800_000, "duration_minutes": 30, "invitees": {"terminals": [room]}}))).await;
    assert_eq!(s, StatusCode::OK);
    // A system admin of the org sees every meeting of the subtree.
    let all = app
        .ok(
            "GET",
            "/api/v1/meetings?view=scope&include_cancelled=true",
            &sys,
            None,
        )
        .await;
    assert!(all.as_array().unwrap().len() >= 3);
    let _ = outsider;
}

async fn signin_counts_live_and_is_idempotent(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let a = app.org(&sys, root, "甲支部").await;
    let bb = app.org(&sys, root, "乙支部").await;
    let host = app.user(&sys, a, "host", "主持人", json!({})).await;
    let mut a_users = vec![];
    for i in 0..3 {
        a_users.push(
            app.user(&sys, a, &format!("a{i}"), &format!("甲{i}"), json!({}))
                .await,
        );
    }
    let b_user = app.user(&sys, bb, "b0", "乙0", json!({})).await;
    let room = app.ok("POST", "/api/v1/terminals", &sys, Some(json!({"name": "乙会议室", "org_id": bb, "protocol": "h323", "address": "10.1.1.1"}))).await["id"].as_i64().unwrap();
    let host_t = app.login("host", USER_PW).await;
    let m = app
        .ok(
            "POST",
            "/api/v1/meetings",
            &host_t,
            Some(json!({
                "title": "组织生活会", "starts_at_ms": T0, "duration_minutes": 120,
                "invitees": {"users": [b_user], "terminals": [room], "orgs": [{"id": a}]}
            })),
        )
        .await;
    let (mid, number) = (
        m["id"].as_i64().unwrap(),
        m["number"].as_str().unwrap().to_owned(),
    );
    // No sign-in yet.
    assert_eq!(
        app.state
            .record_sign_in(&number, SignInParticipant::User(a_users[0]), 1)
            .await
            .unwrap(),
        SignInOutcome::NoOpenSignin
    );
    let (s, _) = app
        .call(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins"),
            Some(&host_t),
            Some(json!({"deadline_ms": T0 - 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let si = app
        .ok(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins"),
            &host_t,
            Some(json!({"deadline_ms": T0 + 300_000})),
        )
        .await;
    let sid = si["id"].as_i64().unwrap();
    // On time: a user via the API (twice: idempotent), another via the signalling hook
    // (twice), the room terminal with a headcount of 12.
    let a0 = app.login("a0", USER_PW).await;
    let r1 = app
        .ok(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins/{sid}/submit"),
            &a0,
            None,
        )
        .await;
    app.clock.advance(Duration::from_secs(10));
    let r2 = app
        .ok(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins/{sid}/submit"),
            &a0,
            None,
        )
        .await;
    assert_eq!(
        (
            r1["newly_recorded"].as_bool(),
            r2["newly_recorded"].as_bool()
        ),
        (Some(true), Some(false))
    );
    assert_eq!(r1["signed_at_ms"], r2["signed_at_ms"]);
    assert_eq!(
        app.state
            .record_sign_in(&number, SignInParticipant::User(a_users[1]), 1)
            .await
            .unwrap(),
        SignInOutcome::Recorded { late: false }
    );
    assert_eq!(
        app.state
            .record_sign_in(&number, SignInParticipant::User(a_users[1]), 1)
            .await
            .unwrap(),
        SignInOutcome::AlreadySigned { late: false }
    );
    assert_eq!(
        app.state
            .record_sign_in(&number, SignInParticipant::Terminal(room), 12)
            .await
            .unwrap(),
        SignInOutcome::Recorded { late: false }
    );
    assert_eq!(
        app.state
            .record_sign_in(&number, SignInParticipant::Terminal(987654), 1)
            .await
            .unwrap(),
        SignInOutcome::UnknownParticipant
    );
    assert_eq!(
        app.state
            .record_sign_in(
                &number,
                SignInParticipant::Guest {
                    key: "p-7".into(),
                    name: "访客".into()
                },
                1
            )
            .await
            .unwrap(),
        SignInOutcome::Recorded { late: false }
    );
    // Live counts while it runs.
    let r = app
        .ok(
            "GET",
            &format!("/api/v1/meetings/{mid}/signins/{sid}"),
            &host_t,
            None,
        )
        .await;
    assert_eq!(r["open"], true);
    // Invited: 3 users of 甲 + b0 + the room = 5 (the host is not in 甲's invite list? they are: 甲 has host too).
    let t = &r["totals"];
    assert_eq!(t["invited"], 6, "{r}");
    assert_eq!(
        (
            t["signed"].as_i64(),
            t["late"].as_i64(),
            t["absent"].as_i64()
        ),
        (Some(3), Some(0), Some(3))
    );
    assert_eq!(t["headcount"], 2 + 12 + 3);
    assert_eq!(r["uninvited"].as_array().unwrap().len(), 1);
    let by_org = r["by_org"].as_array().unwrap();
    let jia = by_org.iter().find(|o| o["org_id"] == a).unwrap();
    assert_eq!(
        (
            jia["counts"]["invited"].as_i64(),
            jia["counts"]["signed"].as_i64()
        ),
        (Some(4), Some(2))
    );
    let yi = by_org.iter().find(|o| o["org_id"] == bb).unwrap();
    assert_eq!(
        (
            yi["counts"]["signed"].as_i64(),
            yi["counts"]["absent"].as_i64()
        ),
        (Some(1), Some(1))
    );
    // After the deadline: late.
    app.clock.advance(Duration::from_secs(600));
    assert_eq!(
        app.state
            .record_sign_in(&number, SignInParticipant::User(b_user), 1)
            .await
            .unwrap(),
        SignInOutcome::Recorded { late: true }
    );
    let r = app
        .ok(
            "GET",
            &format!("/api/v1/meetings/{mid}/signins/{sid}"),
            &host_t,
            None,
        )
        .await;
    assert_eq!(
        (r["totals"]["late"].as_i64(), r["totals"]["absent"].as_i64()),
        (Some(1), Some(2))
    );
    // CSV export.
    let csv = app
        .ok(
            "GET",
            &format!("/api/v1/meetings/{mid}/signins/{sid}/csv"),
            &host_t,
            None,
        )
        .await;
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with('\u{feff}'));
    assert_eq!(csv.lines().count(), 1 + 6 + 1);
    assert!(csv.contains("乙0") && csv.contains(",late,") && csv.contains(",absent,"));
    // Ordinary invitees cannot see results; ending closes the sign-in.
    let (s, _) = app
        .call(
            "GET",
            &format!("/api/v1/meetings/{mid}/signins/{sid}"),
            Some(&a0),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.ok(
        "POST",
        &format!("/api/v1/meetings/{mid}/signins/{sid}/end"),
        &host_t,
        None,
    )
    .await;
    assert_eq!(
        app.state
            .record_sign_in(&number, SignInParticipant::User(a_users[2]), 1)
            .await
            .unwrap(),
        SignInOutcome::Closed
    );
    let a2 = app.login("a2", USER_PW).await;
    let (s, v) = app
        .call(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins/{sid}/submit"),
            Some(&a2),
            None,
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("signin_closed"))
    );
    // A strict sign-in refuses late submissions.
    let si = app
        .ok(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins"),
            &host_t,
            Some(json!({"deadline_ms": app.clock_now() + 1000, "accept_late": false})),
        )
        .await;
    app.clock.advance(Duration::from_secs(5));
    let (s, _) = app
        .call(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins/{}/submit", si["id"]),
            Some(&a2),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let _ = host;
}

trait ClockNow {
    fn clock_now(&self) -> i64;
}
impl ClockNow for TestApp {
    fn clock_now(&self) -> i64 {
        use admin_api::Clock;
        self.clock.now_ms()
    }
}

async fn errors_are_json_and_never_500(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let check = |s: StatusCode, v: &Value, want: StatusCode, code: &str| {
        assert_eq!(s, want, "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].is_string());
    };
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/orgs",
            Some(&sys),
            Some(json!({"parent_id": root, "name": "x", "evil": 1})),
        )
        .await;
    check(s, &v, StatusCode::BAD_REQUEST, "invalid_body");
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/orgs",
            Some(&sys),
            Some(json!({"parent_id": "root", "name": "x"})),
        )
        .await;
    check(s, &v, StatusCode::BAD_REQUEST, "invalid_body");
    let req = Request::post("/api/v1/orgs")
        .header("authorization", format!("Bearer {sys}"))
        .body(Body::from("{}"))
        .unwrap();
    let (s, v) = app.raw(req).await;
    check(
        s,
        &v,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let req = Request::post("/api/v1/orgs")
        .header("authorization", format!("Bearer {sys}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"parent_id\": 1, "))
        .unwrap();
    let (s, v) = app.raw(req).await;
    check(s, &v, StatusCode::BAD_REQUEST, "invalid_body");
    let big = format!(
        "{{\"parent_id\": 1, \"name\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    let req = Request::post("/api/v1/orgs")
        .header("authorization", format!("Bearer {sys}"))
        .header("content-type", "application/json")
        .body(Body::from(big))
        .unwrap();
    let (s, v) = app.raw(req).await;
    check(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let (s, v) = app
        .call("GET", "/api/v1/orgs/notanumber", Some(&sys), None)
        .await;
    check(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    let (s, v) = app
        .call(
            "GET",
            "/api/v1/orgs/99999999999999999999999",
            Some(&sys),
            None,
        )
        .await;
    check(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    let (s, v) = app
        .call("GET", "/api/v1/users?limit=abc", Some(&sys), None)
        .await;
    check(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    let (s, v) = app
        .call("GET", "/api/v1/users?nope=1", Some(&sys), None)
        .await;
    check(s, &v, StatusCode::BAD_REQUEST, "invalid_field");
    let (s, v) = app.call("GET", "/api/v1/nowhere", None, None).await;
    check(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = app.call("DELETE", "/api/v1/auth/login", None, None).await;
    check(s, &v, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let (s, v) = app.call("GET", "/api/v1/me", None, None).await;
    check(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, v) = app.call("GET", "/api/v1/me", Some("garbage"), None).await;
    check(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, _) = app
        .call(
            "GET",
            "/api/v1/users?limit=-5&offset=99999999999",
            Some(&sys),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // The OpenAPI document lists every route.
    let (s, doc) = app.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/login",
        "/api/v1/meetings",
        "/api/v1/meetings/{id}/signins/{sid}",
        "/api/v1/audit/verify",
        "/api/v1/orgs/{id}/move",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    assert!(paths.len() >= 25);
    // Property run: every documented operation with generated junk bodies, paths and
    // queries, as the system admin and anonymously; nothing may answer 500 or non-JSON.
    fuzz_router(&app, &doc, &sys).await;
}

/// Deterministic generator of hostile values.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() as usize) % xs.len()]
    }
    fn scalar(&mut self) -> Value {
        let strings = [
            "",
            "张三",
            "ᠮᠣᠩᠭᠣᠯ",
            "' OR 1=1 --",
            "a\u{0}b",
            "%_\\",
            "=cmd|' /C calc'!A0",
            "\u{202e}evil",
            "9223372036854775807",
        ];
        match self.next() % 9 {
            0 => Value::Null,
            1 => json!(self.next().is_multiple_of(2)),
            2 => json!(i64::MAX),
            3 => json!(i64::MIN),
            4 => json!(-1),
            5 => json!(1.5e300),
            6 => json!(T0 + (self.next() as i64 % 1_000_000)),
            7 => json!(self.pick(&strings).to_string()),
            _ => json!("x".repeat((self.next() % 300) as usize)),
        }
    }
    fn value(&mut self, depth: u32) -> Value {
        if depth == 0 {
            return self.scalar();
        }
        match self.next() % 4 {
            0 => Value::Array(
                (0..self.next() % 4)
                    .map(|_| self.value(depth - 1))
                    .collect(),
            ),
            1 | 2 => {
                let keys = [
                    "name",
                    "parent_id",
                    "org_id",
                    "title",
                    "starts_at_ms",
                    "duration_minutes",
                    "invitees",
                    "users",
                    "terminals",
                    "orgs",
                    "id",
                    "subtree",
                    "passcode",
                    "username",
                    "password",
                    "phone",
                    "phone_hidden",
                    "role",
                    "scope_org_id",
                    "deadline_ms",
                    "protocol",
                    "address",
                    "recurrence",
                    "frequency",
                    "count",
                    "interval",
                    "min_length",
                    "new_parent_id",
                    "refresh_token",
                    "status",
                    "tags",
                    "email",
                ];
                let mut m = serde_json::Map::new();
                for _ in 0..(self.next() % 8) {
                    m.insert(self.pick(&keys).to_string(), self.value(depth - 1));
                }
                Value::Object(m)
            }
            _ => self.scalar(),
        }
    }
}

async fn fuzz_router(app: &TestApp, doc: &Value, token: &str) {
    let mut g = Gen(0x5eed);
    let root = app.root_id().to_string();
    let ids = [
        root.as_str(),
        "0",
        "-1",
        "abc",
        "99999999999999999999",
        "1e3",
        "%00",
        "张",
    ];
    let mut ops = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            // Logging out would revoke the fuzzer's own token.
            if path.ends_with("/logout") {
                continue;
            }
            ops.push((path.clone(), method.to_uppercase()));
        }
    }
    let mut calls = 0;
    for round in 0..12 {
        for (path, method) in &ops {
            let mut p = path.clone();
            for key in ["{id}", "{sid}"] {
                let id: &str = g.pick::<&str>(&ids);
                p = p.replace(key, &urlencode_path(id));
            }
            if round % 3 == 0 {
                p.push_str(&format!(
                    "?q={}&limit={}&org_id={}",
                    urlencode(&g.scalar().to_string()),
                    g.next() as i64 - (1 << 30),
                    *g.pick(&ids)
                ));
            }
            let body = if method == "GET" {
                None
            } else {
                Some(g.value(3))
            };
            let tok = if round % 4 == 3 { None } else { Some(token) };
            let (s, v) = app.call(method, &p, tok, body.clone()).await;
            calls += 1;
            assert_ne!(
                s,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {p} {body:?} -> {v}"
            );
            if !p.ends_with("/csv") || s != StatusCode::OK {
                assert!(
                    v.get("code").is_some() || s == StatusCode::OK,
                    "{method} {p} -> {s} {v}"
                );
            }
        }
    }
    assert!(calls > 300);
}

fn urlencode_path(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn csv_import_reports_rows(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let city = app.org(&sys, root, "市").await;
    let csv = "\u{feff}username,name,org,title,phone,phone_hidden,email,tags\n\
        zs,张三,达拉特旗/树林召镇,书记,13800000001,1,zs@example.cn,党员;委员\n\
        bt,Батбаяр ᠪᠠᠲᠤ,达拉特旗,,,0,,\n\
        root1,\"王, 五\",,\"主任 \"\"大\"\"\",,否,,\n\
        zs,重复,达拉特旗,,,,,\n\
        bad phone,名,达拉特旗,,abc,,,\n\
        ph,名,达拉特旗,,138,maybe,,\n\
        noname,,达拉特旗,,,,,\n\
        evil,=cmd|' /C calc'!A0,达拉特旗,,,,,\n";
    let (s, r) = app
        .call_csv(
            &format!("/api/v1/users/import?org_id={city}&create_orgs=true"),
            Some(&sys),
            csv,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["rows"].as_i64(),
            r["created"].as_i64(),
            r["failed"].as_i64(),
            r["orgs_created"].as_i64()
        ),
        (Some(8), Some(4), Some(4), Some(2)),
        "{r}"
    );
    let lines: Vec<i64> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, vec![5, 6, 7, 8], "{r}");
    assert_eq!(r["errors"][0]["code"], "conflict");
    // Imported data landed where the CSV said, hidden phone stays hidden.
    let users = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={city}&q=zs"),
            &sys,
            None,
        )
        .await;
    assert_eq!(users[0]["phone_hidden"], true);
    assert_eq!(users[0]["tags"], json!(["党员", "委员"]));
    let u = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={city}&q=root1"),
            &sys,
            None,
        )
        .await;
    assert_eq!(
        (
            u[0]["name"].as_str(),
            u[0]["title"].as_str(),
            u[0]["org_id"].as_i64()
        ),
        (Some("王, 五"), Some("主任 \"大\""), Some(city))
    );
    let t = app.login("sysadmin", SYS_PW).await;
    let dir = app
        .ok("GET", "/api/v1/directory/users?q=zs", &t, None)
        .await;
    assert!(dir[0]["phone"].is_null());
    // Re-import without creating orgs: unknown org paths are row errors.
    let (_, r) = app
        .call_csv(
            &format!("/api/v1/users/import?org_id={city}"),
            Some(&sys),
            "username,name,org\nnew1,新,不存在\nnew2,新,达拉特旗\n",
        )
        .await;
    assert_eq!(
        (r["created"].as_i64(), r["failed"].as_i64()),
        (Some(1), Some(1)),
        "{r}"
    );
    // Whole-file problems are 400/415.
    let (s, v) = app
        .call_csv(
            &format!("/api/v1/users/import?org_id={city}"),
            Some(&sys),
            "username,name,org,shoe_size\n",
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let (s, _) = app
        .call_csv(
            &format!("/api/v1/users/import?org_id={city}"),
            Some(&sys),
            "username,name\n",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app
        .call(
            "POST",
            &format!("/api/v1/users/import?org_id={city}"),
            Some(&sys),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Invalid UTF-8 in one row fails that row only.
    let mut bytes = b"username,name,org\nok1,ok,\nbad,".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b",\nok2,ok,\n");
    let req = Request::post(format!("/api/v1/users/import?org_id={city}"))
        .header("authorization", format!("Bearer {sys}"))
        .header("content-type", "text/csv")
        .body(Body::from(bytes))
        .unwrap();
    let (s, r) = app.raw(req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (r["created"].as_i64(), r["failed"].as_i64()),
        (Some(2), Some(1)),
        "{r}"
    );
    // Progress callbacks see every batch.
    let mut big = String::from("username,name,org\n");
    for i in 0..2500 {
        big.push_str(&format!("bulk{i},用户{i},乡{}\n", i % 7));
    }
    let seen = std::sync::Mutex::new(vec![]);
    let opts = admin_api::import::ImportOptions {
        root_org_id: city,
        create_orgs: true,
    };
    let rep = app
        .state
        .import_users_csv(big.as_bytes(), opts, &|p| {
            seen.lock().unwrap().push(p.rows_done)
        })
        .await
        .unwrap();
    assert_eq!((rep.created, rep.orgs_created), (2500, 7));
    assert_eq!(*seen.lock().unwrap(), vec![1000, 2000, 2500]);
}

async fn recording_catalogue_and_shares(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let a = app.org(&sys, root, "甲").await;
    app.user(&sys, a, "owner", "主人", json!({})).await;
    let friend = app.user(&sys, a, "friend", "朋友", json!({})).await;
    app.user(&sys, a, "stranger", "路人", json!({})).await;
    let owner_t = app.login("owner", USER_PW).await;
    let m = app
        .ok(
            "POST",
            "/api/v1/meetings",
            &owner_t,
            Some(json!({"title": "录制会", "starts_at_ms": T0})),
        )
        .await;
    let mid = m["id"].as_i64().unwrap();
    // The recorder registers a recording, appends fragments (a repeat is ignored), finishes.
    let rec = app.state.register_recording(mid, "录制会 1").await.unwrap();
    for seq in [0, 1, 1, 2] {
        app.state
            .add_recording_file(
                rec.id,
                seq,
                &format!("rec/{}/{seq}.mp4", rec.id),
                1000 + seq,
                2000,
            )
            .await
            .unwrap();
    }
    app.state
        .finish_recording(rec.id, admin_api::recordings::RecordingStatus::Ready, 6000)
        .await
        .unwrap();
    let v = app
        .ok(
            "GET",
            &format!("/api/v1/recordings/{}", rec.id),
            &owner_t,
            None,
        )
        .await;
    assert_eq!(
        (
            v["status"].as_str(),
            v["duration_ms"].as_i64(),
            v["files"].as_array().unwrap().len()
        ),
        (Some("ready"), Some(6000), 3)
    );
    // Shared with a chosen user until an expiry.
    let friend_t = app.login("friend", USER_PW).await;
    let stranger_t = app.login("stranger", USER_PW).await;
    let (s, _) = app
        .call(
            "GET",
            &format!("/api/v1/recordings/{}", rec.id),
            Some(&friend_t),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.ok(
        "PUT",
        &format!("/api/v1/recordings/{}/shares", rec.id),
        &owner_t,
        Some(json!({"user_ids": [friend], "expires_at_ms": T0 + 600_000})),
    )
    .await;
    app.ok(
        "GET",
        &format!("/api/v1/recordings/{}", rec.id),
        &friend_t,
        None,
    )
    .await;
    assert_eq!(
        app.ok("GET", "/api/v1/recordings", &friend_t, None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (s, _) = app
        .call(
            "GET",
            &format!("/api/v1/recordings/{}", rec.id),
            Some(&stranger_t),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Sharees cannot re-share or delete.
    let (s, _) = app
        .call(
            "PUT",
            &format!("/api/v1/recordings/{}/shares", rec.id),
            Some(&friend_t),
            Some(json!({"user_ids": []})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .call(
            "PUT",
            &format!("/api/v1/recordings/{}/shares", rec.id),
            Some(&owner_t),
            Some(json!({"user_ids": [31337]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // After the expiry the share stops working.
    app.clock.advance(Duration::from_secs(601));
    let friend_t = app.login("friend", USER_PW).await;
    let (s, _) = app
        .call(
            "GET",
            &format!("/api/v1/recordings/{}", rec.id),
            Some(&friend_t),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        app.ok("GET", "/api/v1/recordings", &friend_t, None)
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Delete.
    let owner_t = app.login("owner", USER_PW).await;
    app.ok(
        "DELETE",
        &format!("/api/v1/recordings/{}", rec.id),
        &owner_t,
        None,
    )
    .await;
    let (s, _) = app
        .call(
            "GET",
            &format!("/api/v1/recordings/{}", rec.id),
            Some(&owner_t),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn concurrent_writes_keep_signin_idempotent_and_chain_valid(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let a = app.org(&sys, root, "甲").await;
    let mut users = vec![];
    for i in 0..12 {
        users.push(
            app.user(&sys, a, &format!("c{i}"), &format!("并发{i}"), json!({}))
                .await,
        );
    }
    let m = app
        .ok(
            "POST",
            "/api/v1/meetings",
            &sys,
            Some(json!({"title": "并发", "starts_at_ms": T0, "invitees": {"orgs": [{"id": a}]}})),
        )
        .await;
    let (mid, number) = (
        m["id"].as_i64().unwrap(),
        m["number"].as_str().unwrap().to_owned(),
    );
    let si = app
        .ok(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins"),
            &sys,
            Some(json!({"deadline_ms": T0 + 600_000})),
        )
        .await;
    // Every user signs in four times at once, while orgs are created concurrently.
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..4 {
        for &u in &users {
            let st = app.state.clone();
            let number = number.clone();
            tasks.spawn(async move {
                st.record_sign_in(&number, SignInParticipant::User(u), 1)
                    .await
                    .map(|o| (u, o))
            });
        }
        let st = app.state.clone();
        tasks.spawn(async move {
            st.create_org(a, &format!("并发组织{round}"), 0)
                .await
                .map_err(admin_api::Error::Api)?;
            Ok((0, SignInOutcome::NoOpenSignin))
        });
    }
    let mut recorded = std::collections::HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (u, outcome) = r.unwrap().expect("no write may fail under concurrency");
        if let SignInOutcome::Recorded { .. } = outcome {
            *recorded.entry(u).or_insert(0) += 1;
        }
    }
    assert_eq!(recorded.len(), users.len());
    assert!(recorded.values().all(|&n| n == 1), "{recorded:?}");
    let r = app
        .ok(
            "GET",
            &format!("/api/v1/meetings/{mid}/signins/{}", si["id"]),
            &sys,
            None,
        )
        .await;
    assert_eq!(r["totals"]["signed"], users.len());
    let aud = app.aud().await;
    let v = app.ok("GET", "/api/v1/audit/verify", &aud, None).await;
    assert_eq!(v["ok"], true, "{v}");
}

async fn bootstrap_generates_one_time_passwords(b: Backend) {
    // Empty bootstrap passwords: generated, printed once to stderr, must be changed.
    let mut cfg = test_config();
    cfg.bootstrap.system_admin_password.clear();
    cfg.bootstrap.security_admin_password.clear();
    cfg.bootstrap.audit_admin_password.clear();
    let app = TestApp::with_config(b, cfg).await;
    let flags: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT username, must_change_password, role FROM users ORDER BY username")
            .fetch_all(app.state.pool())
            .await
            .unwrap();
    assert_eq!(flags.len(), 3);
    assert!(flags.iter().all(|(_, must, _)| *must == 1), "{flags:?}");
    let roles: Vec<_> = flags.iter().map(|f| f.2.clone().unwrap()).collect();
    assert_eq!(roles, vec!["audit_admin", "security_admin", "system_admin"]);
    // The configured passwords of other tests do not work here.
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "sysadmin", "password": SYS_PW})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A weak configured password refuses to start.
    let mut weak = test_config();
    weak.bootstrap.audit_admin_password = "short".into();
    let dir = tempfile::tempdir().unwrap();
    weak.data_dir = dir.path().to_path_buf();
    let err = admin_api::AdminState::connect(
        weak,
        app.clock.clone(),
        std::sync::Arc::new(admin_api::SeededEntropy::new(5)),
    )
    .await;
    assert!(matches!(
        err,
        Err(admin_api::Error::WeakBootstrapPassword(_))
    ));
    // Nothing was written: fixing the password bootstraps completely.
    let mut fixed = test_config();
    fixed.data_dir = dir.path().to_path_buf();
    let st = admin_api::AdminState::connect(
        fixed,
        app.clock.clone(),
        std::sync::Arc::new(admin_api::SeededEntropy::new(6)),
    )
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(st.pool())
        .await
        .unwrap();
    assert_eq!(n, 3);
}
