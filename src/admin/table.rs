//! A result set the admin console sends: text columns, typed like
//! PgBouncer's (bigint counters, text names), encoded with pgwire.

use bytes::BytesMut;

use crate::protocol::messages::{self, oid};

pub struct Table {
    columns: Vec<(&'static str, u32)>,
    rows: Vec<Vec<Option<String>>>,
}

/// One cell: a number, a text or NULL.
pub enum Cell {
    Int(i64),
    Text(String),
    Null,
}

impl From<usize> for Cell {
    fn from(v: usize) -> Self {
        Cell::Int(v as i64)
    }
}
impl From<u64> for Cell {
    fn from(v: u64) -> Self {
        Cell::Int(v as i64)
    }
}
impl From<i64> for Cell {
    fn from(v: i64) -> Self {
        Cell::Int(v)
    }
}
impl From<i32> for Cell {
    fn from(v: i32) -> Self {
        Cell::Int(v as i64)
    }
}
impl From<u16> for Cell {
    fn from(v: u16) -> Self {
        Cell::Int(v as i64)
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Text(v.to_string())
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Text(v)
    }
}
impl From<&String> for Cell {
    fn from(v: &String) -> Self {
        Cell::Text(v.clone())
    }
}
impl From<bool> for Cell {
    fn from(v: bool) -> Self {
        Cell::Int(v as i64)
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Self {
        v.map_or(Cell::Null, Into::into)
    }
}

impl Table {
    /// Columns as `name` (text) or `name:int` (bigint).
    pub fn new(columns: &[&'static str]) -> Table {
        let columns = columns
            .iter()
            .map(|c| match c.strip_suffix(":int") {
                Some(name) => (name, oid::INT8),
                None => (*c, oid::TEXT),
            })
            .collect();
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        let row = row
            .into_iter()
            .map(|c| match c {
                Cell::Int(v) => Some(v.to_string()),
                Cell::Text(t) => Some(t),
                Cell::Null => None,
            })
            .collect();
        self.rows.push(row);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// RowDescription, the rows and `SHOW`'s CommandComplete.
    pub fn encode(&self, out: &mut BytesMut) {
        messages::row_description(out, &self.columns);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
            messages::data_row(out, &values);
        }
        messages::command_complete(out, "SHOW");
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for milliseconds since the Unix epoch, as
/// PgBouncer prints its connect and request times.
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm); a date crate for one line of output is not worth it.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(timestamp(1_796_212_805_000), "2026-12-02 12:00:05 UTC");
    }

    #[test]
    fn encodes_columns_rows_and_tag() {
        let mut t = Table::new(&["name", "count:int"]);
        t.push(vec!["a".into(), 3usize.into()]);
        t.push(vec![Cell::Null, 0usize.into()]);
        let mut out = BytesMut::new();
        t.encode(&mut out);
        assert_eq!(out[0], b'T');
        assert_eq!(t.len(), 2);
        assert!(out.windows(4).any(|w| w == b"SHOW"));
    }
}
