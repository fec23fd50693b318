//! `huitong admin import|export` run as the built binary on a small CSV with bad rows:
//! exit status, per-row report, the imported users in the export, no hidden phone.

use std::path::Path;
use std::process::{Command, Output};

const HIDDEN: &str = "13912345678";

fn huitong(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_huitong"))
        .arg("admin")
        .arg("--config")
        .arg(dir.join("huitong.toml"))
        .args(args)
        .current_dir(dir)
        .env_remove("HUITONG_DATA_DIR")
        .env_remove("HUITONG_ADMIN__DATABASE_URL")
        .output()
        .expect("run huitong")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn import_reports_bad_rows_and_export_hides_phones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("huitong.toml"),
        format!(
            "data_dir = {:?}\n[admin]\nargon2_memory_kib = 64\nargon2_iterations = 1\n[admin.bootstrap]\n\
             system_admin_password = \"Sys-Admin-Pass-1\"\nsecurity_admin_password = \"Sec-Admin-Pass-2\"\n\
             audit_admin_password = \"Aud-Admin-Pass-3\"\n",
            d.join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut csv = String::from("username,name,org,phone,phone_hidden,email\n");
    csv.push_str("zhang,张三丰,旗/镇,13800138000,0,\n"); // 2
    csv.push_str("batu,ᠪᠠᠲᠤ,旗/ᠰᠤᠮᠤ,,0,\n"); // 3
    csv.push_str(&format!("wang,王书记,旗,{HIDDEN},1,\n")); // 4
    csv.push_str("li,李四,旗,13x,0,\n"); // 5: bad phone
    csv.push_str("noname,,旗,,0,\n"); // 6: empty name
    csv.push_str("zhao,赵六,旗,,maybe,\n"); // 7: bad flag
    csv.push_str("qian,钱七,旗,,0,not-an-email\n"); // 8: bad e-mail
    csv.push_str("zhang,重复,旗,,0,\n"); // 9: duplicate user name
    let mut bytes = csv.into_bytes();
    bytes.extend_from_slice(b"sun,\xff\xfe,x,,0,\n"); // 10: invalid UTF-8
    std::fs::write(d.join("users.csv"), bytes).unwrap();

    let out = huitong(
        d,
        &[
            "import",
            "users.csv",
            "--create-orgs",
            "--report",
            "report.csv",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let summary = text(&out.stderr);
    assert!(summary.contains("9 rows, 3 created, 6 failed"), "{summary}");
    let report = std::fs::read_to_string(d.join("report.csv")).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], "row,column,code,reason");
    let cells: Vec<(String, String)> = lines[1..]
        .iter()
        .map(|l| {
            let mut it = l.split(',');
            (it.next().unwrap().to_owned(), it.next().unwrap().to_owned())
        })
        .collect();
    let want = [
        ("5", "phone"),
        ("6", "name"),
        ("7", "phone_hidden"),
        ("8", "email"),
        ("9", "username"),
        ("10", ""),
    ];
    assert_eq!(
        cells,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>(),
        "{report}"
    );

    // Without --report the report goes to standard output.
    std::fs::write(
        d.join("more.csv"),
        "username,name,org\nzhou,周八,旗\nzhou,周八,旗\n",
    )
    .unwrap();
    let out = huitong(d, &["import", "more.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains("3,username,conflict,"),
        "{}",
        text(&out.stdout)
    );

    // A file refused as a whole (unknown column): status 1, nothing imported.
    std::fs::write(d.join("bad.csv"), "username,name,org,salary\na,b,c,1\n").unwrap();
    let out = huitong(d, &["import", "bad.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("salary"),
        "{}",
        text(&out.stderr)
    );

    // A clean file: status 0.
    std::fs::write(d.join("good.csv"), "username,name,org\nwu,吴九,旗\n").unwrap();
    let out = huitong(d, &["import", "good.csv"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Export both formats: every imported user, the visible number, not the hidden one.
    let out = huitong(d, &["export", "all.csv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = std::fs::read_to_string(d.join("all.csv")).unwrap();
    for name in ["张三丰", "ᠪᠠᠲᠤ", "王书记", "周八", "吴九", "13800138000"] {
        assert!(all.contains(name), "{name} in {all}");
    }
    assert!(
        !all.contains(HIDDEN) && !all.contains(&HIDDEN[3..]),
        "{all}"
    );
    let out = huitong(d, &["export", "all.xlsx"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let book = std::fs::read(d.join("all.xlsx")).unwrap();
    let sheets = admin_api::xlsx::read_all_sheets(&book).unwrap();
    let rows = &sheets[0].1;
    let batu = rows.iter().find(|r| r[0] == "batu").unwrap();
    assert_eq!(batu[2], "旗/ᠰᠤᠮᠤ");
    let wang = rows.iter().find(|r| r[0] == "wang").unwrap();
    assert_eq!((wang[4].as_str(), wang[5].as_str()), ("", "1"));
    assert!(!format!("{rows:?}").contains(&HIDDEN[3..]));
    // The XLSX export imports again with the same code path: all duplicates now.
    let out = huitong(d, &["import", "all.xlsx", "--report", "again.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("0 created"),
        "{}",
        text(&out.stderr)
    );

    // An unknown extension is refused before anything is written.
    let out = huitong(d, &["export", "all.txt"]);
    assert_eq!(out.status.code(), Some(1));
}
