//! Admin console end-to-end test: a real `huitong serve` process, the real console at
//! `/admin/` and one headless Chromium. The system admin logs in with the one-time
//! bootstrap password the server printed, is made to change it, creates an
//! organisation and a user, schedules a meeting inviting both, sees it in the list and
//! the calendar and starts a sign-in whose live results list the user. Then the audit
//! admin logs in, sees only the audit screens, finds the meeting's creation in the log
//! and verifies the hash chain.
//!
//! ```text
//! cargo nextest run -p server --test admin_console_e2e
//! ```
//!
//! Needs Debian `chromium` and `chromium-driver` (see `tests/common/browser.rs`).

mod common;

use std::time::Duration;

use common::browser::{Browser, LOG_TAIL_LINES, Server, TestResult, check_tools, poll};
use fantoccini::Locator;
use serde_json::Value;
use tokio::time::timeout;

const WHOLE_TEST_TIMEOUT: Duration = Duration::from_secs(240);
const UI_TIMEOUT: Duration = Duration::from_secs(20);
const ORG: &str = "测试街道党工委";
const USER_NAME: &str = "王小明";
const USERNAME: &str = "wangxm";
const MEETING_TITLE: &str = "全市组织工作会议";
const NEW_SYSADMIN_PASSWORD: &str = "Console-e2e-Pass1";
const NEW_AUDIT_PASSWORD: &str = "Audit-e2e-Pass22";

/// The one-time password `admin-api/src/bootstrap.rs` printed for `username`.
fn bootstrap_password(server: &Server, username: &str) -> TestResult<String> {
    let marker = format!("'{username}' with one-time password: ");
    server
        .log
        .lines()
        .iter()
        .find_map(|l| l.split_once(&marker).map(|(_, pw)| pw.trim().to_owned()))
        .ok_or_else(|| format!("the server printed no one-time password for {username}"))
}

async fn click(b: &Browser, css: &str) -> TestResult<()> {
    // Lists re-render when their data arrives; an element found just before that is
    // stale, and finding it again is what a person would do (click again).
    let mut attempts = 0;
    loop {
        let el = b
            .client
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .map_err(|e| format!("find {css}: {e}"))?;
        match el.click().await {
            Ok(()) => return Ok(()),
            Err(e) if attempts < 20 && e.to_string().contains("stale element") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("click {css}: {e}")),
        }
    }
}

async fn type_into(b: &Browser, css: &str, text: &str) -> TestResult<()> {
    let el = b
        .client
        .wait()
        .at_most(UI_TIMEOUT)
        .for_element(Locator::Css(css))
        .await
        .map_err(|e| format!("find {css}: {e}"))?;
    el.clear().await.map_err(|e| format!("clear {css}: {e}"))?;
    el.send_keys(text)
        .await
        .map_err(|e| format!("type into {css}: {e}"))
}

/// The visible text of the first element matching `css` ("" when there is none or it
/// is hidden).
async fn text(b: &Browser, css: &str) -> TestResult<String> {
    let css_js = serde_json::to_string(css).map_err(|e| e.to_string())?;
    let v = b
        .js(&format!(
            "const e = document.querySelector({css_js}); return e && e.checkVisibility() ? e.innerText : '';"
        ))
        .await?;
    Ok(v.as_str().unwrap_or_default().to_owned())
}

/// Waits until the element's text contains every one of `needles`; the error shows
/// what the page said instead.
async fn wait_text(b: &Browser, css: &str, needles: &[&str]) -> TestResult<String> {
    let found = poll(UI_TIMEOUT, Duration::from_millis(150), || async {
        let t = text(b, css).await.ok()?;
        needles.iter().all(|n| t.contains(n)).then_some(t)
    })
    .await;
    match found {
        Some(t) => Ok(t),
        None => Err(format!(
            "{css} never showed {needles:?}; it shows {:?}; toast {:?}; dialog error {:?}",
            text(b, css).await.unwrap_or_default(),
            text(b, "#toast").await.unwrap_or_default(),
            text(b, "#dlg-error").await.unwrap_or_default(),
        )),
    }
}

/// Logs in through the form; a one-time password leads to the forced change.
async fn login(b: &Browser, username: &str, one_time: &str, new_password: &str) -> TestResult<()> {
    type_into(b, "#login-username", username).await?;
    type_into(b, "#login-password", one_time).await?;
    click(b, "#login-submit").await?;
    wait_text(b, "#pwchange-form", &["修改密码"]).await?;
    type_into(b, "#pw-new", new_password).await?;
    type_into(b, "#pw-new2", new_password).await?;
    click(b, "#pw-submit").await?;
    wait_text(b, "#who", &[username]).await?;
    Ok(())
}

async fn nav_labels(b: &Browser) -> TestResult<Vec<String>> {
    let v = b
        .js("return [...document.querySelectorAll('#nav button')].map(x => x.textContent);")
        .await?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

async fn scenario(server: &Server, b: &Browser) -> TestResult<()> {
    let base = format!("http://{}/admin/", server.http);
    b.client
        .goto(&base)
        .await
        .map_err(|e| format!("open {base}: {e}"))?;

    // A wrong password is refused with the API's message, and the page stays on login.
    type_into(b, "#login-username", "sysadmin").await?;
    type_into(b, "#login-password", "not-the-password").await?;
    click(b, "#login-submit").await?;
    wait_text(b, "#login-error", &["用户名或密码错误"]).await?;

    let one_time = bootstrap_password(server, "sysadmin")?;
    login(b, "sysadmin", &one_time, NEW_SYSADMIN_PASSWORD).await?;
    let nav = nav_labels(b).await?;
    if !nav.iter().any(|l| l == "组织目录") || nav.iter().any(|l| l == "审计日志") {
        return Err(format!("system admin's menu is wrong: {nav:?}"));
    }
    println!("sysadmin logged in and changed the one-time password; menu {nav:?}");

    // Create an organisation below the root (selected first) and open it.
    wait_text(b, "#org-title", &["会通"]).await?;
    click(b, "#org-add").await?;
    type_into(b, "#f-name", ORG).await?;
    click(b, "#dlg-save").await?;
    let node = format!(".node[data-name=\"{ORG}\"] > .row > .label");
    wait_text(b, "#org-tree", &[ORG]).await?;
    click(b, &node).await?;
    wait_text(b, "#org-title", &[ORG]).await?;
    wait_text(b, "#org-path", &["会通 / ", ORG]).await?;
    println!("organisation {ORG} created and selected");

    // Create a user in it; the user table of the organisation lists them.
    click(b, "#user-add").await?;
    type_into(b, "#f-username", USERNAME).await?;
    type_into(b, "#f-name", USER_NAME).await?;
    type_into(b, "#f-title", "组织委员").await?;
    type_into(b, "#f-phone", "13800138000").await?;
    click(b, "#dlg-save").await?;
    wait_text(
        b,
        "#user-table tbody",
        &[USER_NAME, USERNAME, "组织委员", "13800138000"],
    )
    .await?;
    // Pinyin-initials search finds them.
    type_into(b, "#user-q", "wxm").await?;
    click(b, "#user-search button[type=submit]").await?;
    wait_text(b, "#user-table tbody", &[USER_NAME]).await?;
    println!("user {USER_NAME} created and found by pinyin initials");

    // Schedule a meeting: invite the user (picked by search) and the organisation.
    click(b, "#nav button[data-view=meetings]").await?;
    click(b, "#mtg-new").await?;
    type_into(b, "#f-title", MEETING_TITLE).await?;
    type_into(b, "#f-duration", "90").await?;
    click(b, "#f-invite_org").await?;
    type_into(b, "#m-invite-users input[type=search]", "王小").await?;
    click(b, "#m-invite-users .results button").await?;
    wait_text(b, "#m-invite-users .chips", &[USER_NAME]).await?;
    click(b, "#dlg-save").await?;
    let row = wait_text(b, "#mtg-table tbody", &[MEETING_TITLE, "90 分钟", "已预约"]).await?;
    let number = b
        .js("const t = [...document.querySelectorAll('#mtg-table tbody tr')].find(r => r.innerText.includes('全市组织工作会议')); return t ? t.querySelector('td.mono').textContent : '';")
        .await?;
    let number = number.as_str().unwrap_or_default().to_owned();
    if number.len() != 9 || !number.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "meeting number {number:?} is not 9 digits; row {row:?}"
        ));
    }
    println!("meeting {number} scheduled and listed");

    // The calendar shows it on its day (next month when the next full hour is there).
    click(b, "[data-mview=calendar]").await?;
    let in_month = poll(
        Duration::from_secs(4),
        Duration::from_millis(150),
        || async {
            let t = text(b, "#cal-grid").await.ok()?;
            t.contains(MEETING_TITLE).then_some(())
        },
    )
    .await;
    if in_month.is_none() {
        click(b, "#cal-next").await?;
        wait_text(b, "#cal-grid", &[MEETING_TITLE]).await?;
    }
    click(b, "[data-mview=list]").await?;

    // Start a sign-in: the live results name the invited user as not yet signed in.
    wait_text(b, "#mtg-table tbody", &[MEETING_TITLE]).await?;
    click(
        b,
        "#mtg-table tbody tr[data-id] td:last-child button:nth-child(2)",
    )
    .await?;
    wait_text(b, "#si-title", &[MEETING_TITLE, &number]).await?;
    click(b, "#si-start button[type=submit]").await?;
    wait_text(b, "#si-state", &["进行中"]).await?;
    wait_text(b, "#si-people tbody", &[USER_NAME, "未签到"]).await?;
    wait_text(b, "#si-orgs tbody", &[ORG]).await?;
    let totals = text(b, "#si-totals").await?;
    if !totals.contains("未签到") {
        return Err(format!("sign-in totals missing: {totals:?}"));
    }
    click(b, "#si-end").await?;
    wait_text(b, "#si-state", &["已结束"]).await?;
    println!("sign-in started, live results shown, ended");

    // The audit admin sees only their screens, the log and a verified chain.
    click(b, "#logout").await?;
    let one_time = bootstrap_password(server, "auditadmin")?;
    login(b, "auditadmin", &one_time, NEW_AUDIT_PASSWORD).await?;
    let nav = nav_labels(b).await?;
    if nav != ["审计日志", "我的账户"] {
        return Err(format!("audit admin's menu is wrong: {nav:?}"));
    }
    type_into(b, "#audit-action", "meeting_create").await?;
    click(b, "#audit-form button[type=submit]").await?;
    wait_text(
        b,
        "#audit-table tbody",
        &["sysadmin", "meeting_create", &number],
    )
    .await?;
    click(b, "#audit-verify").await?;
    wait_text(b, "#audit-verify-result", &["哈希链完整"]).await?;
    println!("audit admin found the meeting's creation and verified the chain");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_login_org_user_meeting_signin_audit() {
    if let Err(e) = check_tools() {
        panic!("{e}");
    }
    // Cheap password hashing: the test measures the console, not argon2.
    let server = match Server::start_with(&[
        ("HUITONG_ADMIN__ARGON2_MEMORY_KIB", "1024"),
        ("HUITONG_ADMIN__ARGON2_ITERATIONS", "1"),
    ])
    .await
    {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let browser = match Browser::launch("console").await {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let outcome = match timeout(WHOLE_TEST_TIMEOUT, scenario(&server, &browser)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "scenario did not finish within {WHOLE_TEST_TIMEOUT:?}"
        )),
    };
    let server_log = server.log.tail(LOG_TAIL_LINES);
    let mut shot = String::new();
    if outcome.is_err()
        && let Ok(Ok(png)) = timeout(Duration::from_secs(10), browser.client.screenshot()).await
    {
        let path = std::env::temp_dir().join("admin_console_e2e_failure.png");
        if std::fs::write(&path, png).is_ok() {
            shot = format!("\n--- screenshot of the page: {}", path.display());
        }
    }
    let _ = timeout(Duration::from_secs(10), browser.client.clone().close()).await;
    drop(server);
    if let Err(e) = outcome {
        panic!("{e}{shot}\n--- server output (last {LOG_TAIL_LINES} lines):\n{server_log}");
    }
}
