//! RFC 4180 CSV: a header line, one line per row, CRLF line ends; a field is
//! quoted when it holds a comma, a double quote, CR or LF, and a double quote
//! inside a quoted field is doubled.

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
}
