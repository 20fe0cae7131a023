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
    // Most values need no escape: a pass that finds that out, then a copy.
    if !needs_escape(b) {
        out.extend_from_slice(b);
        out.push(b'\'');
        return;
    }
    // Binary values (random bytes) have a byte to escape every 40 bytes or so: a table
    // lookup per byte, runs without one copied whole.
    out.reserve(b.len() + b.len() / 16 + 1);
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let e = ESCAPE[c as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(&[b'\\', e]);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'\'');
}

/// For each byte, the letter of its escape after a backslash (0: none).
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    t[0] = b'0';
    t[b'\'' as usize] = b'\'';
    t[b'\\' as usize] = b'\\';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[0x1a] = b'Z';
    t
};

/// Whether `b` holds a byte [`push_quoted`] escapes. Written over fixed blocks of 32
/// bytes without branches inside a block, which the compiler turns into a few SIMD
/// compares per block (a fold over the whole slice was compiled byte by byte, and was
/// 15% of a freeze's CPU time).
fn needs_escape(b: &[u8]) -> bool {
    #[inline(always)]
    fn special(c: u8) -> u8 {
        ((c == 0) | (c == b'\'') | (c == b'\\') | (c == b'\n') | (c == b'\r') | (c == 0x1a)) as u8
    }
    #[inline(always)]
    fn any(block: &[u8; 32]) -> bool {
        block.iter().fold(0u8, |acc, &c| acc | special(c)) != 0
    }
    let mut blocks = b.chunks_exact(32);
    for block in &mut blocks {
        if any(block.try_into().expect("32 bytes")) {
            return true;
        }
    }
    // The tail too as one block, padded with a byte that needs no escape.
    let mut tail = [b' '; 32];
    tail[..blocks.remainder().len()].copy_from_slice(blocks.remainder());
    any(&tail)
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
        // memchr: a byte-by-byte split was 7% of a thaw's CPU time.
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', text).chain(std::iter::once(text.len()));
        for end in ends {
            let line = &text[start..end];
            start = end + 1;
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

    /// How the server reads a quoted literal (without NO_BACKSLASH_ESCAPES).
    fn unquote(lit: &[u8]) -> Vec<u8> {
        let inner = &lit[1..lit.len() - 1];
        let mut out = Vec::new();
        let mut i = 0;
        while i < inner.len() {
            let c = inner[i];
            if c == b'\\' {
                i += 1;
                out.push(match inner[i] {
                    b'0' => 0,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b'Z' => 0x1a,
                    other => other,
                });
            } else {
                assert_ne!(c, b'\'', "an unescaped quote inside a literal");
                out.push(c);
            }
            i += 1;
        }
        out
    }

    #[test]
    fn one_special_byte_anywhere_is_escaped() {
        // needs_escape reads blocks of 32 and a padded tail: every length and position
        // around those edges.
        for len in 0..100 {
            let plain: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(!needs_escape(&plain));
            for at in 0..len {
                for special in [0u8, b'\'', b'\\', b'\n', b'\r', 0x1a] {
                    let mut b = plain.clone();
                    b[at] = special;
                    assert!(needs_escape(&b), "{len} {at} {special}");
                    let mut out = Vec::new();
                    push_quoted(&mut out, &b);
                    assert_eq!(unquote(&out), b);
                }
            }
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn any_double_reads_back_exactly(bits in any::<u64>()) {
            let d = f64::from_bits(bits);
            prop_assume!(d.is_finite());
            let s = lit(Value::Double(d), ColumnKind::Other);
            prop_assert_eq!(s.parse::<f64>().unwrap().to_bits(), bits, "{}", s);
        }

        #[test]
        fn any_float_reads_back_exactly(bits in any::<u32>()) {
            let f = f32::from_bits(bits);
            prop_assume!(f.is_finite());
            let s = lit(Value::Float(f), ColumnKind::Other);
            // The server reads the literal as a double and rounds it into the FLOAT
            // column: exact, since the widened value is a float.
            prop_assert_eq!((s.parse::<f64>().unwrap() as f32).to_bits(), bits, "{}", s);
        }

        #[test]
        fn bytes_read_back_and_stay_one_statement(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut out = Vec::new();
            push_quoted(&mut out, &b);
            prop_assert!(!out.contains(&b'\n'), "a literal spans lines");
            prop_assert_eq!(unquote(&out), b.clone());
            // A chunk of such rows splits back into exactly its statements.
            let mut chunk = b"INSERT INTO `t` VALUES (".to_vec();
            chunk.extend_from_slice(&out);
            chunk.extend_from_slice(b");\nINSERT INTO `t` VALUES (1);\n");
            let stmts = statements(&chunk);
            prop_assert_eq!(stmts.len(), 2);
            prop_assert_eq!(&stmts[0][24..stmts[0].len() - 1], &out[..]);
        }

        #[test]
        fn decimals_are_the_servers_digits(d in "-?[0-9]{1,40}(\\.[0-9]{1,30})?") {
            prop_assert_eq!(lit(Value::Bytes(d.clone().into_bytes()), ColumnKind::Decimal), d);
        }

        #[test]
        fn datetimes_read_back(y in 0u16..=9999, mo in 0u8..=12, d in 0u8..=31, h in 0u8..24,
                               mi in 0u8..60, s in 0u8..60, us in 0u32..1_000_000) {
            let text = lit(Value::Date(y, mo, d, h, mi, s, us), ColumnKind::DateTime);
            let inner = text.trim_matches('\'');
            let (date, time) = inner.split_once(' ').unwrap();
            let f: Vec<u32> = date.split('-').chain(time.split([':', '.'])).map(|x| x.parse().unwrap()).collect();
            prop_assert_eq!(&f[..6], &[y as u32, mo as u32, d as u32, h as u32, mi as u32, s as u32][..]);
            prop_assert_eq!(f.get(6).copied().unwrap_or(0), us);
            let date_only = lit(Value::Date(y, mo, d, 0, 0, 0, 0), ColumnKind::Date);
            prop_assert_eq!(date_only, format!("'{y:04}-{mo:02}-{d:02}'"));
        }

        #[test]
        fn times_read_back(neg in any::<bool>(), days in 0u32..35, h in 0u8..24, mi in 0u8..60,
                           s in 0u8..60, us in 0u32..1_000_000) {
            let text = lit(Value::Time(neg, days, h, mi, s, us), ColumnKind::Other);
            let inner = text.trim_matches('\'');
            let (sign, rest) = match inner.strip_prefix('-') { Some(r) => (true, r), None => (false, inner) };
            let f: Vec<u64> = rest.split([':', '.']).map(|x| x.parse().unwrap()).collect();
            prop_assert_eq!(sign, neg);
            prop_assert_eq!(f[0], days as u64 * 24 + h as u64);
            prop_assert_eq!((f[1], f[2]), (mi as u64, s as u64));
            prop_assert_eq!(f.get(3).copied().unwrap_or(0), us as u64);
        }
    }
}
