//! `huitong admin …`: directory maintenance from the command line, on the same
//! configuration (data dir, `admin.database_url`) and the same admin-api code paths as
//! `huitong serve`. The operator of this command has the database itself, so it acts
//! with full scope; every run is still written to the audit log (actor `cli`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use admin_api::audit::{AuditEvent, Outcome};
use admin_api::export::ExportFormat;
use admin_api::import::{ImportOptions, ImportProgress, ImportReport};
use anyhow::{Context, bail};
use clap::Subcommand;

use crate::Config;

/// Exit status when the command ran but some rows were refused.
pub const EXIT_ROWS_FAILED: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Import users from a CSV or XLSX file (columns: username, name, org, and optional
    /// title, phone, phone_hidden, email, tags). Good rows are committed, bad rows are
    /// reported (row, column, reason) and the exit status is 2 when any row failed.
    Import {
        /// The file: `.csv` or `.xlsx` (told apart by content, not name).
        file: PathBuf,
        /// Organisation the `org` column is relative to (default: the root).
        #[arg(long)]
        org: Option<i64>,
        /// Create organisations named in `org` that do not exist yet.
        #[arg(long)]
        create_orgs: bool,
        /// Write the per-row error report (CSV: row,column,code,reason) here instead
        /// of standard output.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Export users to a `.csv` or `.xlsx` file (the import's columns). Hidden phone
    /// numbers are never exported.
    Export {
        /// The file to write; its extension picks the format.
        file: PathBuf,
        /// Export this organisation's subtree (default: the whole tree).
        #[arg(long)]
        org: Option<i64>,
    },
}

/// Run one admin command to completion.
pub fn run(cmd: AdminCmd, cfg: Config) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let state = admin_api::AdminState::connect(
            crate::admin_config(&cfg),
            Arc::new(admin_api::SystemClock),
            Arc::new(admin_api::OsEntropy),
        )
        .await
        .context("opening the admin database")?;
        match cmd {
            AdminCmd::Import {
                file,
                org,
                create_orgs,
                report,
            } => import(&state, &file, org, create_orgs, report.as_deref()).await,
            AdminCmd::Export { file, org } => export(&state, &file, org).await,
        }
    })
}

fn root_id(state: &admin_api::AdminState) -> anyhow::Result<i64> {
    state
        .root_path()
        .trim_matches('/')
        .parse()
        .context("root organisation path")
}

/// The organisation to work on, checked to exist; returns its id and path.
async fn org_or_root(
    state: &admin_api::AdminState,
    org: Option<i64>,
) -> anyhow::Result<(i64, String)> {
    let id = match org {
        Some(id) => id,
        None => root_id(state)?,
    };
    match state.org(id).await? {
        Some(o) => Ok((o.id, o.path)),
        None => bail!("organisation {id} does not exist"),
    }
}

async fn audit(
    state: &admin_api::AdminState,
    action: &str,
    target: String,
    scope: &str,
    outcome: Outcome,
    detail: String,
) -> anyhow::Result<()> {
    state
        .audit(AuditEvent {
            actor_id: None,
            actor_name: "cli".into(),
            ip: "local".into(),
            action: action.into(),
            target,
            scope_path: scope.into(),
            outcome,
            detail,
        })
        .await?;
    Ok(())
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total);
    // Draws on stderr, and not at all when stderr is not a terminal.
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

async fn import(
    state: &admin_api::AdminState,
    file: &Path,
    org: Option<i64>,
    create_orgs: bool,
    report_to: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (org_id, org_path) = org_or_root(state, org).await?;
    let pb = progress_bar(data.len() as u64);
    let on_progress = {
        let pb = pb.clone();
        move |p: ImportProgress| {
            pb.set_length(p.bytes_total);
            pb.set_position(p.bytes_done);
            pb.set_message(format!("{} rows", p.rows_done));
        }
    };
    let opts = ImportOptions {
        root_org_id: org_id,
        create_orgs,
    };
    let result = state.import_users_file(&data, opts, &on_progress).await;
    pb.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        // A file refused as a whole (unknown column, not a workbook): nothing imported.
        Err(e) => bail!("{}: {}", file.display(), e.message),
    };
    audit(
        state,
        "user_import",
        format!("org:{org_id}"),
        &org_path,
        Outcome::Ok,
        format!(
            "cli: rows {} created {} failed {} orgs {}",
            report.rows, report.created, report.failed, report.orgs_created
        ),
    )
    .await?;
    write_report(&report, report_to)?;
    eprintln!(
        "{}: {} rows, {} created, {} failed, {} organisations created{}",
        file.display(),
        report.rows,
        report.created,
        report.failed,
        report.orgs_created,
        if report.errors_truncated {
            " (error report truncated)"
        } else {
            ""
        }
    );
    Ok(if report.failed > 0 {
        ExitCode::from(EXIT_ROWS_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The per-row report as CSV: `row,column,code,reason`.
fn write_report(report: &ImportReport, to: Option<&Path>) -> anyhow::Result<()> {
    let out: Box<dyn Write> = match to {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = csv::Writer::from_writer(out);
    w.write_record(["row", "column", "code", "reason"])?;
    for e in &report.errors {
        let code = serde_json::to_value(e.code)?
            .as_str()
            .unwrap_or_default()
            .to_owned();
        w.write_record([
            e.line.to_string(),
            e.column.clone().unwrap_or_default(),
            code,
            e.message.clone(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

async fn export(
    state: &admin_api::AdminState,
    file: &Path,
    org: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let Some(format) = ExportFormat::from_path(file) else {
        bail!(
            "{}: the file name must end in .csv or .xlsx",
            file.display()
        );
    };
    let (org_id, org_path) = org_or_root(state, org).await?;
    let out = state
        .export_users(org_id, format)
        .await
        .map_err(|e| anyhow::anyhow!("export: {}", e.message))?;
    std::fs::write(file, &out.bytes).with_context(|| format!("writing {}", file.display()))?;
    audit(
        state,
        "user_export",
        format!("org:{org_id}"),
        &org_path,
        Outcome::Ok,
        format!("cli: {} users as {}", out.users, format.extension()),
    )
    .await?;
    eprintln!("{}: {} users", file.display(), out.users);
    Ok(ExitCode::SUCCESS)
}
