//! Bulk import of users from CSV or XLSX, with a per-row error report (line, column,
//! reason) and progress callbacks (for the CLI's progress bar). Missing organisations named in the `org` column are
//! created below the import root when asked to.
//!
//! Columns (header row required, any order): `username`, `name`, `org` (required);
//! `title`, `phone`, `phone_hidden` (`1/0`, `true/false`, `是/否`), `email`, `tags`
//! (separated by `;`). `org` is a path of organisation names below the import root,
//! separated by `/` (`达拉特旗/树林召镇/某村`); empty means the root itself.

use crate::AdminState;
use crate::db::{DbKind, flag, lock_row};
use crate::directory::{check_email, check_username, clean, clean_phone, join_tags};
use crate::error::{ApiError, ApiResult, Error, ErrorCode};
use crate::pinyin_index::initials;
use serde::Serialize;
use std::collections::HashMap;

/// Rows inserted per transaction. Every user row lands at a random place in each of the
/// users indexes, so a transaction dirties about one page per row per index until it
/// covers most of an index's leaves: bigger transactions rewrite far fewer pages in
/// total. SQLite writes each commit's pages to its WAL and copies them again at the
/// checkpoint, and holds the single write lock while it does, so its batch is a balance:
/// 5,000 rows hold other writers up for well under a second. PostgreSQL locks rows, not
/// the database, and writes in its own processes.
fn batch_rows(kind: DbKind) -> usize {
    match kind {
        DbKind::Sqlite => 5000,
        DbKind::Postgres => 1000,
    }
}
/// Progress is reported every this many rows read, and at the end.
const PROGRESS_ROWS: u64 = 1000;
/// An import that creates at least this many users refreshes PostgreSQL's statistics.
const ANALYZE_AFTER: u64 = 1000;
/// At most this many row errors are reported (the counts stay exact).
const MAX_ERRORS: usize = 1000;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RowError {
    /// Line number in the file (the header is line 1); for XLSX the sheet's row number.
    pub line: u64,
    /// The column the error is about, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub rows: u64,
    pub created: u64,
    pub failed: u64,
    pub orgs_created: u64,
    pub errors: Vec<RowError>,
    pub errors_truncated: bool,
}

impl ImportReport {
    fn fail(&mut self, line: u64, column: Option<&str>, e: ApiError) {
        self.failed += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(RowError {
                line,
                column: column.map(str::to_owned),
                code: e.code,
                message: e.message,
            });
        } else {
            self.errors_truncated = true;
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ImportProgress {
    pub rows_done: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Organisation the `org` column is relative to.
    pub root_org_id: i64,
    /// Create organisations named in `org` that do not exist yet.
    pub create_orgs: bool,
}

#[derive(Default)]
struct Columns {
    username: usize,
    name: usize,
    org: usize,
    title: Option<usize>,
    phone: Option<usize>,
    phone_hidden: Option<usize>,
    email: Option<usize>,
    tags: Option<usize>,
}

fn columns(header: &csv::StringRecord) -> ApiResult<Columns> {
    let mut found: HashMap<&str, usize> = HashMap::new();
    for (i, h) in header.iter().enumerate() {
        let h = h.trim().trim_start_matches('\u{feff}');
        let known = [
            "username",
            "name",
            "org",
            "title",
            "phone",
            "phone_hidden",
            "email",
            "tags",
        ];
        let Some(k) = known.iter().find(|k| **k == h) else {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!(
                    "unknown column {:?}",
                    h.chars().take(40).collect::<String>()
                ),
            ));
        };
        if found.insert(k, i).is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!("column {k} appears twice"),
            ));
        }
    }
    let need = |k: &str| {
        found
            .get(k)
            .copied()
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidBody, format!("missing column {k}")))
    };
    Ok(Columns {
        username: need("username")?,
        name: need("name")?,
        org: need("org")?,
        title: found.get("title").copied(),
        phone: found.get("phone").copied(),
        phone_hidden: found.get("phone_hidden").copied(),
        email: found.get("email").copied(),
        tags: found.get("tags").copied(),
    })
}

struct Row {
    line: u64,
    username: String,
    name: String,
    org: String,
    title: String,
    phone: Option<String>,
    phone_hidden: bool,
    email: Option<String>,
    tags: String,
}

/// A row error and the column it is about.
type RowFailure = (Option<&'static str>, ApiError);

fn parse_row(c: &Columns, r: &csv::StringRecord, line: u64) -> Result<Row, RowFailure> {
    let get = |i: Option<usize>| i.and_then(|i| r.get(i)).unwrap_or("");
    let at = |col: &'static str| move |e: ApiError| (Some(col), e);
    let hidden = match get(c.phone_hidden).trim() {
        "" | "0" | "false" | "否" | "no" => false,
        "1" | "true" | "是" | "yes" => true,
        _ => {
            return Err((
                Some("phone_hidden"),
                ApiError::field("phone_hidden", "1/0, true/false or 是/否"),
            ));
        }
    };
    let tags: Vec<String> = get(c.tags)
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Row {
        line,
        username: check_username(get(Some(c.username))).map_err(at("username"))?,
        name: clean("name", get(Some(c.name)), 1, 100).map_err(at("name"))?,
        org: clean("org", get(Some(c.org)), 0, 1000).map_err(at("org"))?,
        title: clean("title", get(c.title), 0, 100).map_err(at("title"))?,
        phone: clean_phone(Some(get(c.phone))).map_err(at("phone"))?,
        phone_hidden: hidden,
        email: check_email(Some(get(c.email))).map_err(at("email"))?,
        tags: join_tags(&tags).map_err(at("tags"))?,
    })
}

/// Whether a row could be read at all; if not, the column at fault and why.
pub(crate) type RowRead = Result<(), (Option<String>, ApiError)>;

/// Where import rows come from: a CSV reader or the cells of an XLSX sheet.
pub(crate) trait RecordSource {
    /// The header row.
    fn header(&mut self) -> ApiResult<csv::StringRecord>;
    /// Fill `rec` with the next row; `None` at the end, otherwise the row's line
    /// number and whether it could be read at all.
    fn next_record(&mut self, rec: &mut csv::StringRecord) -> Option<(u64, RowRead)>;
    /// (done, total) in whatever unit the source counts (bytes for CSV).
    fn position(&self) -> (u64, u64);
}

struct CsvSource<'a> {
    rdr: csv::Reader<&'a [u8]>,
    total: u64,
}

impl RecordSource for CsvSource<'_> {
    fn header(&mut self) -> ApiResult<csv::StringRecord> {
        self.rdr
            .headers()
            .cloned()
            .map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("header: {e}")))
    }

    fn next_record(&mut self, rec: &mut csv::StringRecord) -> Option<(u64, RowRead)> {
        let line = self.rdr.position().line();
        match self.rdr.read_record(rec) {
            Ok(false) => None,
            Ok(true) => Some((rec.position().map_or(line, |p| p.line()), Ok(()))),
            // A malformed record (e.g. invalid UTF-8) is that row's error; the reader
            // continues with the next one.
            Err(e) => Some((
                line,
                Err((None, ApiError::new(ErrorCode::InvalidBody, e.to_string()))),
            )),
        }
    }

    fn position(&self) -> (u64, u64) {
        (self.rdr.position().byte(), self.total)
    }
}

/// An organisation the import has resolved: its id, materialised path and depth.
#[derive(Debug, Clone)]
struct OrgRef {
    id: i64,
    path: String,
    depth: i64,
}

/// Bound values per multi-row statement. PostgreSQL allows 65,535 and binds by
/// position. On SQLite (limit 32,766) sqlx looks up each `$n` placeholder's name, and
/// SQLite finds a parameter's name by a linear walk of the statement's parameter list:
/// binding n values costs n²/2 steps. With 6,000 values per statement that walk was 40 %
/// of a 300,000-user import's CPU (perf), so SQLite gets statements of ~600 values.
fn values_per_statement(kind: DbKind) -> usize {
    match kind {
        DbKind::Sqlite => 600,
        DbKind::Postgres => 8000,
    }
}

/// `($1,…,$k),($k+1,…)…` for `rows` rows of `cols` values.
fn values_list(rows: usize, cols: usize) -> String {
    values_list_with(rows, cols, |_| String::new())
}

/// As [`values_list`], each row followed by `extra(first placeholder number of the row)`
/// (which starts with a comma when it adds a value).
fn values_list_with(rows: usize, cols: usize, extra: impl Fn(usize) -> String) -> String {
    let mut s = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            s.push_str(&format!("${}", r * cols + c + 1));
        }
        s.push_str(&extra(r * cols + 1));
        s.push(')');
    }
    s
}

/// The cleaned name path of an `org` cell (`a / b/c` → `["a","b","c"]`).
fn org_parts(names: &str) -> ApiResult<Vec<String>> {
    names
        .split('/')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| clean("org", p, 1, 100))
        .collect()
}

impl AdminState {
    /// Resolve every organisation path named by `keys` into `cache` (keyed by the
    /// cleaned names joined with `/`), creating the missing ones when allowed. One level
    /// of the tree at a time, so a level's parents exist before its children: each
    /// level is one transaction under the tree lock with multi-row inserts, instead of a
    /// lookup and a transaction per organisation (which made PostgreSQL import ~300
    /// rows/s: one commit, so one WAL flush, per organisation).
    async fn resolve_orgs(
        &self,
        cache: &mut HashMap<String, OrgRef>,
        opts: &ImportOptions,
        keys: &[Vec<String>],
        report: &mut ImportReport,
    ) -> Result<(), Error> {
        use sqlx::Row as _;
        let max_depth = keys.iter().map(Vec::len).max().unwrap_or(0);
        for level in 1..=max_depth {
            // (parent key, name) pairs of this level not yet resolved.
            let mut want: Vec<(String, String)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for k in keys.iter().filter(|k| k.len() >= level) {
                let key = k[..level].join("/");
                let parent = k[..level - 1].join("/");
                if cache.contains_key(&key) || !cache.contains_key(&parent) {
                    continue;
                }
                if seen.insert(key) {
                    want.push((parent, k[level - 1].clone()));
                }
            }
            if want.is_empty() {
                continue;
            }
            let now = self.now_ms();
            let mut tx = self.inner.db.pool.begin().await?;
            if opts.create_orgs {
                lock_row(&mut tx, "lock:tree").await?;
                for chunk in want.chunks(values_per_statement(self.inner.db.kind()) / 8) {
                    let sql = format!(
                        "INSERT INTO orgs (id, parent_id, name, path, depth, sort, created_at, updated_at) \
                         VALUES {} ON CONFLICT DO NOTHING RETURNING id",
                        values_list(chunk.len(), 8)
                    );
                    let mut q = sqlx::query(&sql);
                    for (parent, name) in chunk {
                        let p = &cache[parent];
                        let id = self.new_id();
                        q = q
                            .bind(id)
                            .bind(p.id)
                            .bind(name.clone())
                            .bind(format!("{}{id}/", p.path))
                            .bind(p.depth + 1)
                            .bind(0_i64)
                            .bind(now)
                            .bind(now);
                    }
                    report.orgs_created += q.fetch_all(&mut *tx).await?.len() as u64;
                }
            }
            // Read back every child of this level's parents, new and pre-existing.
            let by_id: HashMap<i64, String> =
                want.iter().map(|(p, _)| (cache[p].id, p.clone())).collect();
            let parents: Vec<i64> = by_id.keys().copied().collect();
            for chunk in parents.chunks(values_per_statement(self.inner.db.kind())) {
                let sql = format!(
                    "SELECT id, parent_id, name, path, depth FROM orgs WHERE parent_id IN ({})",
                    (1..=chunk.len())
                        .map(|i| format!("${i}"))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                for r in q.fetch_all(&mut *tx).await? {
                    let parent_id: i64 = r.try_get("parent_id")?;
                    let name: String = r.try_get("name")?;
                    let parent_key = &by_id[&parent_id];
                    let key = if parent_key.is_empty() {
                        name
                    } else {
                        format!("{parent_key}/{name}")
                    };
                    cache.insert(
                        key,
                        OrgRef {
                            id: r.try_get("id")?,
                            path: r.try_get("path")?,
                            depth: r.try_get("depth")?,
                        },
                    );
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Import users from CSV bytes. Bad rows are reported and skipped; good rows are
    /// committed in batches, so a failure late in a large file keeps what went before.
    pub async fn import_users_csv(
        &self,
        data: &[u8],
        opts: ImportOptions,
        progress: &(dyn Fn(ImportProgress) + Send + Sync),
    ) -> ApiResult<ImportReport> {
        let rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(data);
        let mut src = CsvSource {
            rdr,
            total: data.len() as u64,
        };
        self.import_users_from(&mut src, opts, progress).await
    }

    /// The one import path for every file format.
    pub(crate) async fn import_users_from(
        &self,
        src: &mut (dyn RecordSource + Send),
        opts: ImportOptions,
        progress: &(dyn Fn(ImportProgress) + Send + Sync),
    ) -> ApiResult<ImportReport> {
        let header = src.header()?;
        let cols = columns(&header)?;
        let mut report = ImportReport::default();
        let mut orgs: HashMap<String, OrgRef> = HashMap::new();
        let root = sqlx::query("SELECT path, depth FROM orgs WHERE id = $1")
            .bind(opts.root_org_id)
            .fetch_optional(&self.inner.db.pool)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| ApiError::not_found("organisation"))?;
        {
            use sqlx::Row as _;
            orgs.insert(
                String::new(),
                OrgRef {
                    id: opts.root_org_id,
                    path: root.try_get("path").map_err(Error::from)?,
                    depth: root.try_get("depth").map_err(Error::from)?,
                },
            );
        }
        let mut record = csv::StringRecord::new();
        let batch_size = batch_rows(self.inner.db.kind());
        let mut batch: Vec<(Row, Vec<String>)> = Vec::with_capacity(batch_size);
        let mut reported = 0;
        loop {
            let next = src.next_record(&mut record);
            let more = next.is_some();
            if let Some((line, read)) = next {
                report.rows += 1;
                match read {
                    Err((col, e)) => report.fail(line, col.as_deref(), e),
                    Ok(()) => match parse_row(&cols, &record, line) {
                        Ok(row) => match org_parts(&row.org) {
                            Ok(parts) => batch.push((row, parts)),
                            Err(e) => report.fail(line, Some("org"), e),
                        },
                        Err((col, e)) => report.fail(line, col, e),
                    },
                }
            }
            if batch.len() >= batch_size || (!more && !batch.is_empty()) {
                self.insert_batch(&mut orgs, &opts, &mut batch, &mut report)
                    .await?;
            }
            // Progress by rows read, at a fixed step whatever the transaction size.
            if report.rows != reported && (report.rows % PROGRESS_ROWS == 0 || !more) {
                reported = report.rows;
                let (done, total) = src.position();
                progress(ImportProgress {
                    rows_done: report.rows,
                    bytes_done: done,
                    bytes_total: total,
                });
            }
            if !more {
                break;
            }
        }
        // Conflicts surface at insert time, after later rows' parse errors.
        report.errors.sort_by_key(|e| e.line);
        if report.created >= ANALYZE_AFTER && self.inner.db.kind() == DbKind::Postgres {
            // Fresh statistics now rather than when autovacuum gets round to it: planned
            // without them, the first subtree listings after a 300,000-row import took
            // seconds each (measured).
            sqlx::raw_sql("ANALYZE users; ANALYZE orgs")
                .execute(&self.inner.db.pool)
                .await
                .map_err(Error::from)?;
        }
        Ok(report)
    }

    /// Insert a batch: its organisations first, then its users with multi-row
    /// `INSERT … ON CONFLICT DO NOTHING RETURNING username`, so an existing user name
    /// is reported per row instead of failing the batch, at one round trip per 500 rows.
    async fn insert_batch(
        &self,
        orgs: &mut HashMap<String, OrgRef>,
        opts: &ImportOptions,
        batch: &mut Vec<(Row, Vec<String>)>,
        report: &mut ImportReport,
    ) -> Result<(), Error> {
        use sqlx::Row as _;
        let keys: Vec<Vec<String>> = batch.iter().map(|(_, k)| k.clone()).collect();
        self.resolve_orgs(orgs, opts, &keys, report).await?;
        let mut rows: Vec<(Row, i64)> = Vec::with_capacity(batch.len());
        for (r, parts) in batch.drain(..) {
            let key = parts.join("/");
            if let Some(o) = orgs.get(&key) {
                rows.push((r, o.id));
                continue;
            }
            // Name the first level that does not exist.
            let missing = (1..=parts.len())
                .map(|l| parts[..l].join("/"))
                .find(|k| !orgs.contains_key(k))
                .unwrap_or(key);
            report.fail(
                r.line,
                Some("org"),
                ApiError::field("org", &format!("organisation {missing:?} does not exist")),
            );
        }
        let now = self.now_ms();
        let mut tx = self.inner.db.pool.begin().await?;
        // Each row copies its org's current path (`org_path`), read under the tree lock
        // so a subtree move cannot interleave.
        lock_row(&mut tx, "lock:tree").await?;
        for chunk in rows.chunks(values_per_statement(self.inner.db.kind()) / 12) {
            let sql = format!(
                "INSERT INTO users (id, username, name, name_initials, org_id, title, tags, phone, \
                 phone_hidden, email, created_at, updated_at, org_path) VALUES {} \
                 ON CONFLICT DO NOTHING RETURNING username",
                // The org id is the row's fifth value.
                values_list_with(chunk.len(), 12, |first| format!(
                    ",COALESCE((SELECT path FROM orgs WHERE id = ${}), '')",
                    first + 4
                ))
            );
            let mut q = sqlx::query(&sql);
            for (r, org) in chunk {
                q = q
                    .bind(self.new_id())
                    .bind(r.username.clone())
                    .bind(r.name.clone())
                    .bind(initials(&r.name))
                    .bind(*org)
                    .bind(r.title.clone())
                    .bind(r.tags.clone())
                    .bind(r.phone.clone())
                    .bind(flag(r.phone_hidden))
                    .bind(r.email.clone())
                    .bind(now)
                    .bind(now);
            }
            let mut inserted = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<std::collections::HashSet<String>, _>>()?;
            for (r, _) in chunk {
                // The first row with a returned name created it; a repeat of the name
                // in the same file is a conflict like an existing user.
                if inserted.remove(&r.username) {
                    report.created += 1;
                } else {
                    report.fail(
                        r.line,
                        Some("username"),
                        ApiError::new(
                            ErrorCode::Conflict,
                            format!("user name {} already exists", r.username),
                        ),
                    );
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
