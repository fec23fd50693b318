//! XLSX import and export (users, sign-in results) and the TOTP second factor, over the
//! real router on both databases.

mod common;

use admin_api::totp::{base32_decode, totp};
use admin_api::xlsx::{XLSX_MEDIA_TYPE, read_all_sheets};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use rust_xlsxwriter::Workbook;
use serde_json::{Value, json};
use tower::ServiceExt;

both_backends!(xlsx_import_and_exports, totp_second_factor);

const HIDDEN: &str = "13912345678";
const MONGOLIAN: &str = "ᠪᠠᠲᠤ";

async fn bytes_call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let resp = app
        .router
        .clone()
        .oneshot(b.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ct, bytes)
}

/// A workbook with a title row gap, Chinese and Mongolian-script names, a phone typed
/// as a number, a hidden phone, and bad rows (phone with letters, missing name,
/// duplicate user name).
fn users_workbook() -> Vec<u8> {
    let mut wb = Workbook::new();
    let ws = wb.add_worksheet();
    let header = ["username", "name", "org", "phone", "phone_hidden", "tags"];
    for (c, h) in header.iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    let rows: [[&str; 6]; 6] = [
        ["zhang", "张三丰", "旗/镇", "", "0", "党员;干部"],
        ["batu", MONGOLIAN, "旗/ᠰᠤᠮᠤ", "", "0", ""],
        ["wang", "王书记", "旗", HIDDEN, "1", ""],
        ["bad_phone", "李四", "旗", "13x", "0", ""],
        ["noname", "", "旗", "", "0", ""],
        ["zhang", "重复", "旗", "", "0", ""],
    ];
    for (r, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            ws.write_string(r as u32 + 1, c as u16, *v).unwrap();
        }
    }
    // Row 8: a phone typed into the sheet as a number.
    ws.write_string(7, 0, "numphone").unwrap();
    ws.write_string(7, 1, "赵六").unwrap();
    ws.write_string(7, 2, "旗").unwrap();
    ws.write_number(7, 3, 13800138000.0).unwrap();
    wb.save_to_buffer().unwrap()
}

async fn xlsx_import_and_exports(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let (s, _, body) = bytes_call(
        &app,
        "POST",
        &format!("/api/v1/users/import?org_id={root}&create_orgs=true"),
        &sys,
        Some(XLSX_MEDIA_TYPE),
        users_workbook(),
    )
    .await;
    let report: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!(report["rows"], 7, "{report}");
    assert_eq!(report["created"], 4, "{report}");
    assert_eq!(report["failed"], 3, "{report}");
    let errs: Vec<(i64, String)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_i64().unwrap(),
                e["column"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errs,
        vec![
            (5, "phone".to_owned()),
            (6, "name".to_owned()),
            (7, "username".to_owned())
        ]
    );
    // Names in both scripts arrived intact, and the numeric phone as digits.
    let users = app
        .ok(
            "GET",
            &format!("/api/v1/users?org_id={root}&limit=500"),
            &sys,
            None,
        )
        .await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&MONGOLIAN) && names.contains(&"张三丰"),
        "{names:?}"
    );
    assert!(users.to_string().contains("13800138000"));
    // A file that claims to be XLSX but is not: one 400, no 500.
    let (s, _, body) = bytes_call(
        &app,
        "POST",
        &format!("/api/v1/users/import?org_id={root}"),
        &sys,
        Some(XLSX_MEDIA_TYPE),
        b"PK\x03\x04 not really a zip".to_vec(),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );

    // Export: XLSX and CSV carry the visible numbers, never the hidden one.
    for format in ["xlsx", "csv"] {
        let (s, ct, bytes) = bytes_call(
            &app,
            "GET",
            &format!("/api/v1/users/export?org_id={root}&format={format}"),
            &sys,
            None,
            vec![],
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let text = if format == "xlsx" {
            assert_eq!(ct, XLSX_MEDIA_TYPE);
            let sheets = read_all_sheets(&bytes).unwrap();
            let rows = &sheets[0].1;
            assert_eq!(rows[0][..3], ["username", "name", "org"]);
            let batu = rows.iter().find(|r| r[0] == "batu").unwrap();
            assert_eq!(batu[1], MONGOLIAN);
            assert_eq!(batu[2], "旗/ᠰᠤᠮᠤ");
            let wang = rows.iter().find(|r| r[0] == "wang").unwrap();
            assert_eq!((wang[4].as_str(), wang[5].as_str()), ("", "1"));
            format!("{rows:?}")
        } else {
            assert!(ct.starts_with("text/csv"));
            String::from_utf8(bytes).unwrap()
        };
        assert!(text.contains("13800138000") && text.contains("张三丰"));
        assert!(
            !text.contains(HIDDEN) && !text.contains(&HIDDEN[3..]),
            "{text}"
        );
    }
    // The CSV export imports again (into another subtree) without a single error.
    let (_, _, csv) = bytes_call(
        &app,
        "GET",
        &format!("/api/v1/users/export?org_id={root}&format=csv"),
        &sys,
        None,
        vec![],
    )
    .await;
    let copy = app.org(&sys, root, "副本").await;
    let renamed = String::from_utf8(csv)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_owned()
            } else {
                format!("c_{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (s, v) = app
        .call_csv(
            &format!("/api/v1/users/import?org_id={copy}&create_orgs=true"),
            Some(&sys),
            &renamed,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["failed"], 0, "{v}");

    // Sign-in results as XLSX.
    let wang: i64 = sqlx::query_scalar("SELECT id FROM users WHERE username = 'wang'")
        .fetch_one(app.state.pool())
        .await
        .unwrap();
    app.state
        .set_password(wang, "wang", USER_PW, false)
        .await
        .unwrap();
    let m = app
        .ok(
            "POST",
            "/api/v1/meetings",
            &sys,
            Some(
                json!({"title": "学习会", "starts_at_ms": T0 + 3_600_000, "org_id": root,
                "invitees": {"users": [wang]}}),
            ),
        )
        .await;
    let mid = m["id"].as_i64().unwrap();
    let sid = app
        .ok(
            "POST",
            &format!("/api/v1/meetings/{mid}/signins"),
            &sys,
            Some(json!({"deadline_ms": T0 + 600_000})),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let wt = app.login("wang", USER_PW).await;
    app.ok(
        "POST",
        &format!("/api/v1/meetings/{mid}/signins/{sid}/submit"),
        &wt,
        None,
    )
    .await;
    let (s, ct, bytes) = bytes_call(
        &app,
        "GET",
        &format!("/api/v1/meetings/{mid}/signins/{sid}/xlsx"),
        &sys,
        None,
        vec![],
    )
    .await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, XLSX_MEDIA_TYPE));
    let sheets = read_all_sheets(&bytes).unwrap();
    assert_eq!(sheets[0].0, "participants");
    let row = sheets[0].1.iter().find(|r| r[2] == "王书记").unwrap();
    assert_eq!(row[4], "signed");
    assert!(!format!("{sheets:?}").contains(HIDDEN));
    let total = sheets[1].1.last().unwrap();
    assert_eq!(total[1], "total");
    assert_eq!(total[3], "1", "one signed: {total:?}");
}

fn code_at(secret_b32: &str, now_ms: i64) -> String {
    let secret = base32_decode(secret_b32).unwrap();
    format!("{:06}", totp(&secret, now_ms / 1000, 6))
}

async fn login_code(app: &TestApp, user: &str, code: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({"username": user, "password": USER_PW});
    if let Some(c) = code {
        body["totp_code"] = json!(c);
    }
    app.call("POST", "/api/v1/auth/login", None, Some(body))
        .await
}

async fn totp_second_factor(b: Backend) {
    let app = TestApp::new(b).await;
    let sys = app.sys().await;
    let root = app.root_id();
    let li = app.user(&sys, root, "li", "李明", json!({})).await;
    let t = app.login("li", USER_PW).await;
    let st = app.ok("GET", "/api/v1/me/totp", &t, None).await;
    assert_eq!(st, json!({"enabled": false, "pending": false}));
    let e = app.ok("POST", "/api/v1/me/totp", &t, None).await;
    let secret = e["secret"].as_str().unwrap().to_owned();
    assert_eq!(base32_decode(&secret).unwrap().len(), 20);
    let uri = e["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Huitong:li?secret="),
        "{uri}"
    );
    assert!(uri.contains(&secret));
    // Pending: login still needs no code.
    assert_eq!(login_code(&app, "li", None).await.0, StatusCode::OK);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/me/totp/confirm",
            Some(&t),
            Some(json!({"code": "000000"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let c0 = code_at(&secret, T0);
    app.ok(
        "POST",
        "/api/v1/me/totp/confirm",
        &t,
        Some(json!({"code": c0})),
    )
    .await;
    let st = app.ok("GET", "/api/v1/me/totp", &t, None).await;
    assert_eq!(st, json!({"enabled": true, "pending": false}));
    // Enrolling again while enabled is a conflict (no silent secret swap).
    let (s, _) = app.call("POST", "/api/v1/me/totp", Some(&t), None).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Login now needs a code; the confirm code's step is spent.
    let (s, v) = login_code(&app, "li", None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("totp_required"))
    );
    let (s, v) = login_code(&app, "li", Some(&c0)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials")),
        "replayed code"
    );
    app.clock.advance(std::time::Duration::from_secs(30));
    let c1 = code_at(&secret, T0 + 30_000);
    let (s, v) = login_code(&app, "li", Some(&c1)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The same fresh code twice: the second is a replay.
    let (s, _) = login_code(&app, "li", Some(&c1)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A wrong password with a right code is still a wrong password.
    app.clock.advance(std::time::Duration::from_secs(30));
    let c2 = code_at(&secret, T0 + 60_000);
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "li", "password": "Wrong-Pass-Word-1", "totp_code": c2})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Wrong codes count towards the lockout (threshold 5, minus the failures above).
    for _ in 0..2 {
        let (s, _) = login_code(&app, "li", Some("999999")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let failed: i64 = sqlx::query_scalar("SELECT failed_logins FROM users WHERE id = $1")
        .bind(li)
        .fetch_one(app.state.pool())
        .await
        .unwrap();
    assert!(failed >= 3, "wrong codes are failures: {failed}");
    let (s, _) = login_code(&app, "li", Some(&c2)).await;
    assert_eq!(s, StatusCode::OK);

    // Disable with a code (a fresh step), then password alone works again.
    let t = {
        app.clock.advance(std::time::Duration::from_secs(30));
        let (s, v) = login_code(&app, "li", Some(&code_at(&secret, T0 + 90_000))).await;
        assert_eq!(s, StatusCode::OK);
        v["access_token"].as_str().unwrap().to_owned()
    };
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/me/totp/disable",
            Some(&t),
            Some(json!({"code": code_at(&secret, T0 + 90_000)})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the login's code cannot disable too"
    );
    app.clock.advance(std::time::Duration::from_secs(30));
    app.ok(
        "POST",
        "/api/v1/me/totp/disable",
        &t,
        Some(json!({"code": code_at(&secret, T0 + 120_000)})),
    )
    .await;
    assert_eq!(login_code(&app, "li", None).await.0, StatusCode::OK);

    // Enrol again; the security admin removes it (lost phone).
    let e = app.ok("POST", "/api/v1/me/totp", &t, None).await;
    let secret2 = e["secret"].as_str().unwrap().to_owned();
    assert_ne!(secret2, secret);
    app.ok(
        "POST",
        "/api/v1/me/totp/confirm",
        &t,
        Some(json!({"code": code_at(&secret2, T0 + 120_000)})),
    )
    .await;
    assert_eq!(
        login_code(&app, "li", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let sec = app.sec().await;
    let (s, _) = app
        .call(
            "POST",
            &format!("/api/v1/accounts/{li}/totp/disable"),
            Some(&sys),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "the system admin does not run security"
    );
    app.ok(
        "POST",
        &format!("/api/v1/accounts/{li}/totp/disable"),
        &sec,
        None,
    )
    .await;
    assert_eq!(login_code(&app, "li", None).await.0, StatusCode::OK);

    // Audited, and no secret in the log.
    let log: Vec<(String, String, String)> =
        sqlx::query_as("SELECT action, result, detail FROM audit_log ORDER BY seq")
            .fetch_all(app.state.pool())
            .await
            .unwrap();
    let actions: Vec<&str> = log.iter().map(|(a, _, _)| a.as_str()).collect();
    for a in ["totp_enrol", "totp_confirm", "totp_disable", "totp_reset"] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }
    assert!(
        log.iter()
            .any(|(a, r, d)| a == "login" && r == "denied" && d.contains("second factor"))
    );
    assert!(
        log.iter()
            .any(|(a, r, d)| a == "login" && r == "failed" && d.contains("already used"))
    );
    let all = format!("{log:?}");
    assert!(!all.contains(&secret) && !all.contains(&secret2));
    // The audit chain still verifies.
    let aud = app.aud().await;
    let v = app.ok("GET", "/api/v1/audit/verify", &aud, None).await;
    assert_eq!(v["ok"], true, "{v}");
}
