//! RFC 4180 CSV: a header line, one line per row, CRLF line ends; a field is
//! quoted when it holds a comma, a double quote, CR or LF, and a double quote
//! inside a quoted field is doubled.
//!
//! Text that people put in the ledger (a reason, a comment, a ticket) reaches
//! an auditor's spreadsheet, which runs a cell starting with `=`, `+`, `-`,
//! `@`, a tab or CR as a formula. Such a value, unless it is an integer, is
//! written with a `'` before it, which spreadsheets show as text.

/// Whether a spreadsheet would take `value` for a formula.
fn formula_like(value: &str) -> bool {
    value.starts_with(['=', '+', '-', '@', '\t', '\r']) && value.parse::<i64>().is_err()
}

/// Writes one field.
pub fn field(value: &str, out: &mut String) {
    let guarded;
    let value = if formula_like(value) {
        guarded = format!("'{value}");
        guarded.as_str()
    } else {
        value
    };
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// Writes the fields of one record, without its line end.
pub fn fields<'a>(fields: impl IntoIterator<Item = &'a str>, out: &mut String) {
    for (i, value) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(value, out);
    }
}

/// Writes one record with its CRLF.
pub fn record<'a>(values: impl IntoIterator<Item = &'a str>, out: &mut String) {
    fields(values, out);
    out.push_str("\r\n");
}

/// The header record of a population's CSV file, with its CRLF.
pub fn header(columns: &[&str]) -> String {
    let mut out = String::new();
    record(columns.iter().copied(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        let mut out = String::new();
        record(["plain", "a,b", "say \"hi\"", "two\nlines", ""], &mut out);
        assert_eq!(out, "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n");
    }

    #[test]
    fn text_a_spreadsheet_would_run_is_written_as_text() {
        let mut out = String::new();
        fields(["=HYPERLINK(\"http://x\")", "+1 555", "@SUM(A1)", "-2", "-12.5", "\tx", "a=b", "42"], &mut out);
        assert_eq!(out, "\"'=HYPERLINK(\"\"http://x\"\")\",'+1 555,'@SUM(A1),-2,'-12.5,'\tx,a=b,42");
    }
}
