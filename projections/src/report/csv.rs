//! RFC 4180 CSV: a header line, one line per row, CRLF line ends; a field is
//! quoted when it holds a comma, a double quote, CR or LF, and a double quote
//! inside a quoted field is doubled.

use super::Population;

/// Writes one field.
pub fn field(value: &str, out: &mut String) {
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// Writes one record with its CRLF.
pub fn record<'a>(fields: impl IntoIterator<Item = &'a str>, out: &mut String) {
    for (i, value) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(value, out);
    }
    out.push_str("\r\n");
}

/// The CSV text of a population: the header, then each row in order.
pub fn population(population: &Population) -> String {
    let mut out = String::new();
    record(population.columns.iter().copied(), &mut out);
    out.reserve(population.rows.iter().map(|r| r.record.len() + 2).sum());
    for row in &population.rows {
        out.push_str(&row.record);
        out.push_str("\r\n");
    }
    out
}

/// Splits CSV text into records (for reporting differences by row). Quoted
/// fields may hold line breaks; the result is the records' raw text.
pub fn records(text: &str) -> Vec<&str> {
    let mut records = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => {
                let end = if i > start && bytes[i - 1] == b'\r' { i - 1 } else { i };
                records.push(&text[start..end]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < text.len() {
        records.push(&text[start..]);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        let mut out = String::new();
        record(["plain", "a,b", "say \"hi\"", "two\nlines", ""], &mut out);
        assert_eq!(out, "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n");
        assert_eq!(records(&out), vec![&out[..out.len() - 2]]);
    }
}
