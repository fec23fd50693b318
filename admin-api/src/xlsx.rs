//! XLSX (Office Open XML spreadsheet) reading for imports and writing for exports.
//! Reading uses `calamine`, writing `rust_xlsxwriter`; both are pure Rust. Cells are
//! written as text or numbers, never as formulas, so exported names cannot inject
//! formulas the way CSV cells can.

use crate::AdminState;
use crate::error::{ApiError, ApiResult, Error, ErrorCode};
use crate::import::{ImportOptions, ImportProgress, ImportReport, RecordSource};
use calamine::{Data, Reader};
use std::io::Cursor;

/// The media type of `.xlsx` files.
pub const XLSX_MEDIA_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// Decompressed size above which an XLSX file is refused before it is parsed (a small
/// zip can expand to gigabytes).
const MAX_UNCOMPRESSED: u64 = 1 << 30;

/// One row of the first sheet: its 1-based row number and its cells as text, or the
/// reason it cannot be read (a cell holding an error value such as `#DIV/0!`).
type SheetRow = (u64, Result<Vec<String>, (Option<String>, ApiError)>);

fn bad_file(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidBody,
        format!("not a readable XLSX file: {why}"),
    )
}

/// Whether the bytes look like a zip container (every XLSX file is one).
pub fn looks_like_xlsx(data: &[u8]) -> bool {
    data.starts_with(b"PK\x03\x04")
}

fn cell_text(c: &Data) -> Result<String, String> {
    Ok(match c {
        Data::Empty => String::new(),
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        // Spreadsheets store phone numbers typed as digits as floats: 13800138000.0.
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        Data::Float(f) => f.to_string(),
        Data::Bool(b) => b.to_string(),
        Data::DateTime(d) => d.as_f64().to_string(),
        Data::Error(e) => return Err(format!("cell holds an error value ({e})")),
    })
}

/// Check the zip directory's declared sizes, then read the first sheet.
fn read_first_sheet(data: &[u8]) -> ApiResult<Vec<SheetRow>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(data)).map_err(bad_file)?;
    let mut expanded: u64 = 0;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(bad_file)?;
        expanded = expanded.saturating_add(entry.size());
    }
    if expanded > MAX_UNCOMPRESSED {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            "XLSX file expands to more than 1 GiB",
        ));
    }
    let mut wb: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(Cursor::new(data)).map_err(bad_file)?;
    let range = wb
        .worksheet_range_at(0)
        .ok_or_else(|| bad_file("the workbook has no sheet"))?
        .map_err(bad_file)?;
    let first_row = u64::from(range.start().map_or(0, |(r, _)| r)) + 1;
    let mut header: Vec<String> = Vec::new();
    let mut rows = Vec::with_capacity(range.height());
    for (i, cells) in range.rows().enumerate() {
        let line = first_row + i as u64;
        if cells.iter().all(|c| matches!(c, Data::Empty)) {
            // Blank rows are layout, not data (the CSV reader skips them too).
            continue;
        }
        let mut out = Vec::with_capacity(cells.len());
        let mut failure = None;
        for (col, c) in cells.iter().enumerate() {
            match cell_text(c) {
                Ok(t) => out.push(t),
                Err(why) => {
                    let column = header.get(col).cloned();
                    failure = Some((column, ApiError::new(ErrorCode::InvalidField, why)));
                    break;
                }
            }
        }
        if header.is_empty() {
            header = out.iter().map(|h| h.trim().to_owned()).collect();
        }
        rows.push((line, failure.map_or(Ok(out), Err)));
    }
    Ok(rows)
}

/// Parse on the calling thread, turning a panic in the parser into a 400: the file is
/// untrusted and the parser is not ours.
fn parse_guarded(data: &[u8]) -> ApiResult<Vec<SheetRow>> {
    std::panic::catch_unwind(|| read_first_sheet(data))
        .unwrap_or_else(|_| Err(bad_file("the parser gave up on this file")))
}

struct XlsxSource {
    rows: std::vec::IntoIter<SheetRow>,
    total: u64,
    done: u64,
    bytes: u64,
}

impl RecordSource for XlsxSource {
    fn header(&mut self) -> ApiResult<csv::StringRecord> {
        match self.rows.next() {
            Some((_, Ok(h))) => {
                self.done += 1;
                Ok(csv::StringRecord::from(h))
            }
            Some((_, Err((_, e)))) => Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!("header: {}", e.message),
            )),
            None => Err(ApiError::new(ErrorCode::InvalidBody, "the sheet is empty")),
        }
    }

    fn next_record(
        &mut self,
        rec: &mut csv::StringRecord,
    ) -> Option<(u64, crate::import::RowRead)> {
        let (line, row) = self.rows.next()?;
        self.done += 1;
        rec.clear();
        Some((
            line,
            row.map(|cells| {
                for c in cells {
                    rec.push_field(&c);
                }
            }),
        ))
    }

    fn position(&self) -> (u64, u64) {
        // Progress in bytes like the CSV source, estimated from rows read.
        (self.bytes * self.done / self.total.max(1), self.bytes)
    }
}

impl AdminState {
    /// Import users from the first sheet of an XLSX workbook: the same columns, checks
    /// and per-row report as [`AdminState::import_users_csv`]; the row numbers are the
    /// sheet's.
    pub async fn import_users_xlsx(
        &self,
        data: &[u8],
        opts: ImportOptions,
        progress: &(dyn Fn(ImportProgress) + Send + Sync),
    ) -> ApiResult<ImportReport> {
        let owned = data.to_vec();
        // Unzipping and XML parsing are CPU-bound: keep them off the async workers.
        let rows = tokio::task::spawn_blocking(move || parse_guarded(&owned))
            .await
            .map_err(|_| ApiError::from(Error::Join))??;
        let mut src = XlsxSource {
            total: rows.len() as u64,
            rows: rows.into_iter(),
            done: 0,
            bytes: data.len() as u64,
        };
        self.import_users_from(&mut src, opts, progress).await
    }

    /// Import from CSV or XLSX, told apart by the zip signature.
    pub async fn import_users_file(
        &self,
        data: &[u8],
        opts: ImportOptions,
        progress: &(dyn Fn(ImportProgress) + Send + Sync),
    ) -> ApiResult<ImportReport> {
        if looks_like_xlsx(data) {
            self.import_users_xlsx(data, opts, progress).await
        } else {
            self.import_users_csv(data, opts, progress).await
        }
    }
}

/// A cell to write.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    Number(f64),
    /// Milliseconds since the Unix epoch, shown as a UTC date and time.
    TimeMs(i64),
    Empty,
}

/// One sheet: a name, a header row and data rows.
pub struct Sheet {
    pub name: String,
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
}

fn xlsx_err(e: rust_xlsxwriter::XlsxError) -> Error {
    Error::Spreadsheet(e.to_string())
}

/// Write a workbook. `now_ms` (the injected clock) becomes its creation time, so the
/// library never reads the system clock and equal inputs give equal files.
pub fn write_workbook(sheets: &[Sheet], now_ms: i64) -> Result<Vec<u8>, Error> {
    use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, Workbook};
    let mut wb = Workbook::new();
    let created = ExcelDateTime::from_timestamp(now_ms.div_euclid(1000)).map_err(xlsx_err)?;
    wb.set_properties(&DocProperties::new().set_creation_datetime(&created));
    let bold = Format::new().set_bold();
    let time = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    for sheet in sheets {
        let ws = wb.add_worksheet();
        ws.set_name(&sheet.name).map_err(xlsx_err)?;
        for (c, h) in sheet.header.iter().enumerate() {
            let c = u16::try_from(c).map_err(|_| Error::Spreadsheet("too many columns".into()))?;
            ws.write_string_with_format(0, c, *h, &bold)
                .map_err(xlsx_err)?;
            ws.set_column_width(c, 16).map_err(xlsx_err)?;
        }
        ws.set_freeze_panes(1, 0).map_err(xlsx_err)?;
        for (r, row) in sheet.rows.iter().enumerate() {
            let r = u32::try_from(r + 1)
                .ok()
                .filter(|r| *r < 1_048_576)
                .ok_or_else(|| Error::Spreadsheet("more rows than a sheet holds".into()))?;
            for (c, cell) in row.iter().enumerate() {
                let c =
                    u16::try_from(c).map_err(|_| Error::Spreadsheet("too many columns".into()))?;
                match cell {
                    Cell::Text(s) => {
                        ws.write_string(r, c, s).map_err(xlsx_err)?;
                    }
                    Cell::Number(n) => {
                        ws.write_number(r, c, *n).map_err(xlsx_err)?;
                    }
                    Cell::TimeMs(ms) => {
                        let t =
                            ExcelDateTime::from_timestamp(ms.div_euclid(1000)).map_err(xlsx_err)?;
                        ws.write_datetime_with_format(r, c, &t, &time)
                            .map_err(xlsx_err)?;
                    }
                    Cell::Empty => {}
                }
            }
        }
    }
    wb.save_to_buffer().map_err(xlsx_err)
}

/// Sign-in results as a workbook: one sheet per participant, one per organisation.
/// Like the CSV, it carries no phone number.
pub fn signin_results_xlsx(
    r: &crate::signin::SigninResults,
    now_ms: i64,
) -> Result<Vec<u8>, Error> {
    use crate::signin::AttendanceStatus;
    let status = |s: AttendanceStatus| match s {
        AttendanceStatus::Signed => "signed",
        AttendanceStatus::Late => "late",
        AttendanceStatus::Absent => "absent",
    };
    let people = r
        .invitees
        .iter()
        .map(|p| (p, true))
        .chain(r.uninvited.iter().map(|p| (p, false)))
        .map(|(p, invited)| {
            vec![
                Cell::Text(p.kind.clone()),
                Cell::Text(p.id.clone()),
                Cell::Text(p.name.clone()),
                p.org_id.map_or(Cell::Empty, |o| Cell::Text(o.to_string())),
                Cell::Text(status(p.status).to_owned()),
                p.signed_at_ms.map_or(Cell::Empty, Cell::TimeMs),
                Cell::Number(p.headcount as f64),
                Cell::Text(if invited { "yes" } else { "no" }.to_owned()),
            ]
        })
        .collect();
    let counts = |c: &crate::signin::Counts| {
        [c.invited, c.signed, c.late, c.absent, c.headcount].map(|n| Cell::Number(n as f64))
    };
    let mut orgs: Vec<Vec<Cell>> = r
        .by_org
        .iter()
        .map(|o| {
            let mut row = vec![
                Cell::Text(o.org_id.to_string()),
                Cell::Text(o.org_name.clone()),
            ];
            row.extend(counts(&o.counts));
            row
        })
        .collect();
    let mut total = vec![Cell::Empty, Cell::Text("total".into())];
    total.extend(counts(&r.totals));
    orgs.push(total);
    write_workbook(
        &[
            Sheet {
                name: "participants".into(),
                header: vec![
                    "kind",
                    "id",
                    "name",
                    "org_id",
                    "status",
                    "signed_at_utc",
                    "headcount",
                    "invited",
                ],
                rows: people,
            },
            Sheet {
                name: "organisations".into(),
                header: vec![
                    "org_id",
                    "org",
                    "invited",
                    "signed",
                    "late",
                    "absent",
                    "headcount",
                ],
                rows: orgs,
            },
        ],
        now_ms,
    )
}

/// A sheet's name and its rows of cell texts.
pub type SheetText = (String, Vec<Vec<String>>);

/// Read back every sheet of a workbook as text rows (tests and tools).
pub fn read_all_sheets(data: &[u8]) -> Result<Vec<SheetText>, Error> {
    let mut wb: calamine::Xlsx<_> = calamine::open_workbook_from_rs(Cursor::new(data))
        .map_err(|e: calamine::XlsxError| Error::Spreadsheet(e.to_string()))?;
    let mut out = Vec::new();
    for name in wb.sheet_names() {
        let range = wb
            .worksheet_range(&name)
            .map_err(|e| Error::Spreadsheet(e.to_string()))?;
        let rows = range
            .rows()
            .map(|r| r.iter().map(|c| cell_text(c).unwrap_or_default()).collect())
            .collect();
        out.push((name, rows));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_cells_read_back() {
        let book = write_workbook(
            &[Sheet {
                name: "s".into(),
                header: vec!["a", "b", "c"],
                rows: vec![vec![
                    Cell::Text("=1+1".into()),
                    Cell::Number(13800138000.0),
                    Cell::Text("ᠮᠣᠩᠭᠣᠯ".into()),
                ]],
            }],
            1_800_000_000_000,
        )
        .unwrap();
        assert!(looks_like_xlsx(&book));
        let sheets = read_all_sheets(&book).unwrap();
        assert_eq!(sheets[0].1[1], vec!["=1+1", "13800138000", "ᠮᠣᠩᠭᠣᠯ"]);
        // The creation time comes from the caller: equal inputs, equal bytes.
        let again = write_workbook(
            &[Sheet {
                name: "s".into(),
                header: vec!["a", "b", "c"],
                rows: vec![vec![
                    Cell::Text("=1+1".into()),
                    Cell::Number(13800138000.0),
                    Cell::Text("ᠮᠣᠩᠭᠣᠯ".into()),
                ]],
            }],
            1_800_000_000_000,
        )
        .unwrap();
        assert_eq!(book, again);
    }

    #[test]
    fn garbage_is_a_400_not_a_panic() {
        for data in [
            &b""[..],
            b"PK\x03\x04",
            b"PK\x03\x04garbage garbage garbage",
            b"username,name,org\n",
            &[0xff; 64],
        ] {
            let e = parse_guarded(data).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidBody, "{e}");
        }
        // A real zip that is not a workbook.
        let mut buf = Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            w.start_file("hello.txt", zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::Write::write_all(&mut w, b"hi").unwrap();
            w.finish().unwrap();
        }
        let e = parse_guarded(buf.get_ref()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidBody);
    }
}
