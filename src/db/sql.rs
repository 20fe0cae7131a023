//! SQL text: identifiers, literals, the rows of a dump chunk, and splitting a dump file
//! back into statements. Everything here is deterministic: the same values always give
//! the same bytes, which is what lets unchanged chunks deduplicate.

use mysql_async::Value;

/// `name` as a backquoted identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `s` as a single-quoted string literal (for the text of the schema files, which are
/// loaded with `SET NAMES utf8mb4`).
pub fn string_literal(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    push_quoted(&mut out, s.as_bytes());
    String::from_utf8(out).expect("escaping keeps UTF-8 valid")
}

/// How a column's values are written. Decided once per column from its data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Strings, BLOBs, ENUM, SET, JSON: a quoted literal of the exact stored bytes.
    Bytes,
    /// DECIMAL: the server's exact digits, unquoted.
    Decimal,
    /// BIT: a `b'…'` literal.
    Bit,
    /// Spatial types: a hex literal of the internal (SRID + WKB) form.
    Geometry,
    /// DATE: a date without time.
    Date,
    /// DATETIME and TIMESTAMP.
    DateTime,
    /// Integers, YEAR, FLOAT, DOUBLE, TIME.
    Other,
}

impl ColumnKind {
    /// From `information_schema.COLUMNS.DATA_TYPE`.
    pub fn from_data_type(t: &str) -> ColumnKind {
        match t.to_ascii_lowercase().as_str() {
            "decimal" | "numeric" => ColumnKind::Decimal,
            "bit" => ColumnKind::Bit,
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" => ColumnKind::Geometry,
            "date" => ColumnKind::Date,
            "datetime" | "timestamp" => ColumnKind::DateTime,
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "float"
            | "double" | "real" | "year" | "time" => ColumnKind::Other,
            _ => ColumnKind::Bytes,
        }
    }
}

/// Appends one value as an SQL literal. Values come from the binary protocol, so floats
/// arrive as the stored bits and are written in the shortest form that reads back to
/// exactly those bits; a FLOAT is widened first so no second rounding can happen.
pub fn push_value(out: &mut Vec<u8>, v: &Value, kind: ColumnKind) {
    use std::io::Write;
    match v {
        Value::NULL => out.extend_from_slice(b"NULL"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Float(f) => {
            let _ = write!(out, "{:e}", f64::from(*f));
        }
        Value::Double(d) => {
            let _ = write!(out, "{d:e}");
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            out.push(b'\'');
            let _ = write!(out, "{y:04}-{mo:02}-{d:02}");
            if kind != ColumnKind::Date {
                let _ = write!(out, " {h:02}:{mi:02}:{s:02}");
                if *us != 0 {
                    let _ = write!(out, ".{us:06}");
                }
            }
            out.push(b'\'');
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            let _ = write!(out, "'{sign}{hours:02}:{mi:02}:{s:02}");
            if *us != 0 {
                let _ = write!(out, ".{us:06}");
            }
            out.push(b'\'');
        }
        Value::Bytes(b) => match kind {
            ColumnKind::Decimal => out.extend_from_slice(b),
            ColumnKind::Bit => {
                out.extend_from_slice(b"b'");
                let bits: String = b.iter().map(|x| format!("{x:08b}")).collect();
                let trimmed = bits.trim_start_matches('0');
                out.extend_from_slice(if trimmed.is_empty() { "0" } else { trimmed }.as_bytes());
                out.push(b'\'');
            }
            ColumnKind::Geometry => {
                out.extend_from_slice(b"x'");
                out.extend_from_slice(hex::encode(b).as_bytes());
                out.push(b'\'');
            }
            _ => push_quoted(out, b),
        },
    }
}

/// A quoted literal of raw bytes. The escapes are the ones the server and the `mariadb`
/// client both understand without NO_BACKSLASH_ESCAPES; newlines are escaped too, so
/// every data statement stays on one line.
pub fn push_quoted(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'\'');
    // Most values need no escape: one branch-free pass (which the compiler vectorizes)
    // finds that out, then a copy.
    let special = b.iter().fold(false, |acc, &c| {
        acc | (c == 0) | (c == b'\'') | (c == b'\\') | (c == b'\n') | (c == b'\r') | (c == 0x1a)
    });
    if !special {
        out.extend_from_slice(b);
        out.push(b'\'');
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            0 => b"\\0",
            b'\'' => b"\\'",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            0x1a => b"\\Z",
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'\'');
}

/// Appends one row as `(v1,v2,…)`.
pub fn push_row(out: &mut Vec<u8>, row: &[Value], kinds: &[ColumnKind]) {
    out.push(b'(');
    for (i, (v, k)) in row.iter().zip(kinds).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_value(out, v, *k);
    }
    out.push(b')');
}

/// The content checksum of a table: the sum, modulo 2^128, of the XXH3-128 hash of each
/// row's text as [`push_row`] writes it. A sum is independent of row order and, unlike
/// XOR, does not cancel out duplicate rows in a table without a key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowSum {
    pub rows: u64,
    pub sum: u128,
}

impl RowSum {
    pub fn add_row(&mut self, row_text: &[u8]) {
        self.rows += 1;
        self.sum = self
            .sum
            .wrapping_add(twox_hash::XxHash3_128::oneshot(row_text));
    }
    pub fn merge(&mut self, other: RowSum) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }
    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

/// The statements of a dump file. Data chunks hold one statement per line, ending in
/// `;` (their bytes need not be UTF-8: they carry each column's stored bytes). Schema
/// files start with `DELIMITER ;;` (bodies of triggers and routines contain `;`) and end
/// each statement with a line holding only `;;`. `--` comment lines before a statement
/// and blank lines are skipped.
pub fn statements(text: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    if let Some(rest) = text.strip_prefix(b"DELIMITER ;;\n".as_slice()) {
        let mut rest = rest;
        while !rest.is_empty() {
            let (stmt, next) = match find(rest, b"\n;;\n") {
                Some(i) => (&rest[..i], &rest[i + 4..]),
                None => (rest, &rest[rest.len()..]),
            };
            let s = strip_comments(stmt);
            if !s.is_empty() && s != b"DELIMITER ;" {
                out.push(s);
            }
            rest = next;
        }
    } else {
        for line in text.split(|&c| c == b'\n') {
            let s = line.trim_ascii_end();
            if s.is_empty() || s.starts_with(b"-- ") {
                continue;
            }
            out.push(s.strip_suffix(b";").unwrap_or(s));
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn strip_comments(stmt: &[u8]) -> &[u8] {
    let mut s = stmt.trim_ascii();
    while s.starts_with(b"-- ") {
        s = match s.iter().position(|&c| c == b'\n') {
            Some(i) => s[i + 1..].trim_ascii_start(),
            None => &[],
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: Value, k: ColumnKind) -> String {
        let mut out = Vec::new();
        push_value(&mut out, &v, k);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn literals() {
        assert_eq!(lit(Value::NULL, ColumnKind::Bytes), "NULL");
        assert_eq!(lit(Value::Bytes(vec![]), ColumnKind::Bytes), "''");
        assert_eq!(
            lit(Value::Bytes(b"a'b\\c\n\0\x1a".to_vec()), ColumnKind::Bytes),
            "'a\\'b\\\\c\\n\\0\\Z'"
        );
        assert_eq!(lit(Value::Double(0.1), ColumnKind::Other), "1e-1");
        assert_eq!(
            lit(Value::Float(0.1), ColumnKind::Other),
            "1.0000000149011612e-1"
        );
        assert_eq!(lit(Value::Bytes(vec![0, 5]), ColumnKind::Bit), "b'101'");
        assert_eq!(lit(Value::Bytes(vec![0]), ColumnKind::Bit), "b'0'");
        assert_eq!(
            lit(Value::Date(0, 0, 0, 0, 0, 0, 0), ColumnKind::DateTime),
            "'0000-00-00 00:00:00'"
        );
        assert_eq!(
            lit(Value::Date(2024, 2, 29, 1, 2, 3, 50), ColumnKind::DateTime),
            "'2024-02-29 01:02:03.000050'"
        );
        assert_eq!(
            lit(Value::Date(2024, 2, 29, 0, 0, 0, 0), ColumnKind::Date),
            "'2024-02-29'"
        );
        assert_eq!(
            lit(Value::Time(true, 1, 2, 3, 4, 0), ColumnKind::Other),
            "'-26:03:04'"
        );
        assert_eq!(ident("a`b"), "`a``b`");
    }

    #[test]
    fn every_double_reads_back_exactly() {
        for bits in [
            1u64,
            0x3fb999999999999a,
            0x7fefffffffffffff,
            0x8000000000000000,
        ] {
            let d = f64::from_bits(bits);
            let s = lit(Value::Double(d), ColumnKind::Other);
            assert_eq!(s.parse::<f64>().unwrap().to_bits(), bits, "{s}");
        }
    }

    #[test]
    fn splitting() {
        let data = b"SET NAMES binary;\n-- c\nINSERT INTO `t` VALUES ('a;b\xff');\n";
        assert_eq!(
            statements(data),
            vec![
                b"SET NAMES binary".as_slice(),
                b"INSERT INTO `t` VALUES ('a;b\xff')".as_slice()
            ]
        );
        let schema =
            b"DELIMITER ;;\n-- x\nCREATE TRIGGER t BEGIN a; b; END\n;;\nSET x=1\n;;\nDELIMITER ;\n";
        assert_eq!(
            statements(schema),
            vec![
                b"CREATE TRIGGER t BEGIN a; b; END".as_slice(),
                b"SET x=1".as_slice()
            ]
        );
    }
}
