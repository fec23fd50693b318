//! User export as CSV or XLSX, in the import's columns so an export can be edited and
//! imported again. Hidden phone numbers are never exported: the `phone` cell of a user
//! whose number is hidden is empty (and `phone_hidden` is 1), whoever asks.

use crate::AdminState;
use crate::error::{ApiError, ApiResult, Error};
use crate::xlsx::{Cell, Sheet, write_workbook};
use sqlx::Row;
use std::collections::HashMap;

/// The columns, in the import's names.
pub const USER_COLUMNS: [&str; 8] = [
    "username",
    "name",
    "org",
    "title",
    "phone",
    "phone_hidden",
    "email",
    "tags",
];

/// Users fetched per query (keyset paging by id, so 300,000 users cost no OFFSET scans).
const PAGE: i64 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Csv,
    Xlsx,
}

impl ExportFormat {
    /// From a file name's extension.
    pub fn from_path(p: &std::path::Path) -> Option<Self> {
        match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "xlsx" => Some(Self::Xlsx),
            _ => None,
        }
    }
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Xlsx => crate::xlsx::XLSX_MEDIA_TYPE,
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Xlsx => "xlsx",
        }
    }
}

/// An exported file and how many users it holds.
#[derive(Debug, Clone)]
pub struct Export {
    pub bytes: Vec<u8>,
    pub users: u64,
}

/// Spreadsheet programs run cells starting with these as formulas: prefix a quote.
/// Phone numbers (digits, `+`, `-`, spaces by validation) are left as they are so a
/// `+86…` number survives a round trip.
fn defuse(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

impl AdminState {
    /// Every user in the subtree of `org_id`, as rows of [`USER_COLUMNS`], with `org`
    /// relative to that organisation.
    async fn export_rows(&self, org_id: i64) -> ApiResult<Vec<[String; 8]>> {
        let root = self
            .org(org_id)
            .await?
            .ok_or_else(|| ApiError::not_found("organisation"))?;
        let prefix = format!("{}%", crate::db::like_escape(&root.path));
        let mut names: HashMap<String, String> = HashMap::new();
        let orgs = sqlx::query("SELECT id, name FROM orgs WHERE path LIKE $1 ESCAPE '\\'")
            .bind(&prefix)
            .fetch_all(&self.inner.db.pool)
            .await?;
        for o in &orgs {
            let id: i64 = o.try_get("id").map_err(Error::from)?;
            names.insert(id.to_string(), o.try_get("name").map_err(Error::from)?);
        }
        let mut out = Vec::new();
        let mut after = i64::MIN;
        loop {
            let rows = sqlx::query(
                "SELECT u.id, u.username, u.name, o.path, u.title, u.phone, u.phone_hidden, u.email, u.tags \
                 FROM users u JOIN orgs o ON o.id = u.org_id \
                 WHERE o.path LIKE $1 ESCAPE '\\' AND u.id > $2 ORDER BY u.id LIMIT $3",
            )
            .bind(&prefix)
            .bind(after)
            .bind(PAGE)
            .fetch_all(&self.inner.db.pool)
            .await?;
            for r in &rows {
                after = r.try_get("id").map_err(Error::from)?;
                let path: String = r.try_get("path").map_err(Error::from)?;
                let hidden = r.try_get::<i64, _>("phone_hidden").map_err(Error::from)? != 0;
                let phone: Option<String> = r.try_get("phone").map_err(Error::from)?;
                let email: Option<String> = r.try_get("email").map_err(Error::from)?;
                let tags: String = r.try_get("tags").map_err(Error::from)?;
                // `/1/5/23/` below `/1/`: the names of 5 and 23.
                let org = path
                    .get(root.path.len()..)
                    .unwrap_or("")
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|id| names.get(id).map_or("?", String::as_str))
                    .collect::<Vec<_>>()
                    .join("/");
                out.push([
                    r.try_get("username").map_err(Error::from)?,
                    r.try_get("name").map_err(Error::from)?,
                    org,
                    r.try_get("title").map_err(Error::from)?,
                    // The one rule of this module.
                    if hidden {
                        String::new()
                    } else {
                        phone.unwrap_or_default()
                    },
                    if hidden { "1" } else { "0" }.to_owned(),
                    email.unwrap_or_default(),
                    tags.split(',')
                        .filter(|t| !t.is_empty())
                        .collect::<Vec<_>>()
                        .join(";"),
                ]);
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        Ok(out)
    }

    /// Export the users of the subtree of `org_id`. Authorisation is the caller's job
    /// (the route asks for `UserRead` on the org; the CLI runs with database access).
    pub async fn export_users(&self, org_id: i64, format: ExportFormat) -> ApiResult<Export> {
        let rows = self.export_rows(org_id).await?;
        let users = rows.len() as u64;
        let bytes = match format {
            ExportFormat::Csv => {
                let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
                let fail = |e: csv::Error| ApiError::from(Error::Spreadsheet(e.to_string()));
                w.write_record(USER_COLUMNS).map_err(fail)?;
                for r in &rows {
                    let mut rec: Vec<String> = r.iter().map(|c| defuse(c)).collect();
                    rec[4] = r[4].clone();
                    w.write_record(&rec).map_err(fail)?;
                }
                let body = w
                    .into_inner()
                    .map_err(|e| ApiError::from(Error::Spreadsheet(e.to_string())))?;
                // A BOM so spreadsheet programs read the UTF-8 names correctly.
                let mut out = "\u{feff}".as_bytes().to_vec();
                out.extend_from_slice(&body);
                out
            }
            ExportFormat::Xlsx => {
                let rows = rows
                    .into_iter()
                    .map(|r| r.into_iter().map(Cell::Text).collect())
                    .collect();
                let sheet = Sheet {
                    name: "users".into(),
                    header: USER_COLUMNS.to_vec(),
                    rows,
                };
                write_workbook(&[sheet], self.now_ms())?
            }
        };
        Ok(Export { bytes, users })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn defuse_quotes_formula_starts() {
        assert_eq!(super::defuse("=cmd"), "'=cmd");
        assert_eq!(super::defuse("@x"), "'@x");
        assert_eq!(super::defuse("张三"), "张三");
    }
}
