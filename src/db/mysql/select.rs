//! `thaw --table`: the part of a dump that belongs to some of its tables.
//!
//! A table's part is its rows (its chunks), its CREATE TABLE in schema.sql, its ALTER
//! TABLE in indexes.sql (secondary indexes) and in objects.sql (its foreign keys), and the
//! triggers on it. The schema files are filtered statement by statement: every `SET`
//! (they set up the session for what follows) and the statements that name a selected
//! table; the statement shapes are those [`super::schema::schema_files`] writes.

use std::collections::BTreeSet;

use super::sql::statements;
use super::DbManifest;
use crate::error::{Error, Result};

/// The manifest restricted to `tables` (every one of which it must hold).
pub fn restrict(m: &DbManifest, tables: &BTreeSet<String>) -> Result<DbManifest> {
    let unknown: Vec<&String> = tables
        .iter()
        .filter(|t| !m.tables.iter().any(|e| &e.name == *t))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<String> = unknown.iter().map(|t| super::sql::ident(t)).collect();
        return Err(Error::not_found(format!(
            "database {} of the snapshot has no table {}",
            m.database,
            names.join(", ")
        ))
        .with_hint("list its tables with: freezer ls SITE[:SNAPSHOT] DATABASE"));
    }
    let mut out = m.clone();
    out.tables.retain(|t| tables.contains(&t.name));
    // Which triggers are on the selected tables is known from objects.sql, at load time.
    out.objects.retain(|o| o.kind == "trigger");
    Ok(out)
}

/// A schema file with only the `SET` statements and the statements about `tables`.
/// Returns the file and the names of the triggers kept.
pub fn filter_file(text: &[u8], tables: &BTreeSet<String>) -> (Vec<u8>, Vec<String>) {
    let mut out = b"DELIMITER ;;\n".to_vec();
    let mut triggers = Vec::new();
    for s in statements(text) {
        let keep = match subject(s) {
            Subject::Session => true,
            Subject::Table(t) => tables.contains(&t),
            Subject::Trigger { name, table } => {
                let keep = tables.contains(&table);
                if keep {
                    triggers.push(name);
                }
                keep
            }
            Subject::Other => false,
        };
        if keep {
            out.extend_from_slice(s);
            out.extend_from_slice(b"\n;;\n");
        }
    }
    out.extend_from_slice(b"DELIMITER ;\n");
    (out, triggers)
}

#[derive(Debug, PartialEq, Eq)]
enum Subject {
    /// `SET …`: session settings for what follows.
    Session,
    /// `CREATE TABLE t` or `ALTER TABLE t`.
    Table(String),
    Trigger {
        name: String,
        table: String,
    },
    /// Views, routines, events.
    Other,
}

fn subject(stmt: &[u8]) -> Subject {
    let text = String::from_utf8_lossy(stmt);
    let tokens = tokens(&text);
    let word = |i: usize| tokens.get(i).map(|t| t.to_ascii_uppercase());
    match (word(0).as_deref(), word(1).as_deref()) {
        (Some("SET"), _) => return Subject::Session,
        (Some("CREATE" | "ALTER"), Some("TABLE")) => {
            return match tokens.get(2).and_then(|t| unquote(t)) {
                Some(t) => Subject::Table(t),
                None => Subject::Other,
            }
        }
        _ => {}
    }
    // CREATE [DEFINER=…] TRIGGER name {BEFORE|AFTER} {INSERT|UPDATE|DELETE} ON table …
    if word(0).as_deref() != Some("CREATE") {
        return Subject::Other;
    }
    let Some(at) = (1..4.min(tokens.len())).find(|&i| word(i).as_deref() == Some("TRIGGER")) else {
        return Subject::Other;
    };
    let name = tokens.get(at + 1).and_then(|t| unquote(t));
    let on = (at + 2..tokens.len().min(at + 6)).find(|&i| word(i).as_deref() == Some("ON"));
    let table = on.and_then(|i| tokens.get(i + 1)).and_then(|t| unquote(t));
    match (name, table) {
        (Some(name), Some(table)) => Subject::Trigger { name, table },
        _ => Subject::Other,
    }
}

/// The first words of a statement, split at whitespace outside backquotes (enough for
/// the head of a statement; a trigger's body is never reached).
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        if c == '`' {
            quoted = !quoted;
            cur.push(c);
        } else if c.is_whitespace() && !quoted {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                if out.len() >= 12 {
                    return out;
                }
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `` `a``b` `` → ``a`b``; a bare name as it is; None for a qualified name or anything
/// that is not one identifier.
fn unquote(t: &str) -> Option<String> {
    let t = t.trim_end_matches('(');
    match t.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
        Some(inner) => {
            // Doubled backquotes are one; a single one inside means two identifiers.
            let s = inner.replace("``", "\u{0}");
            (!s.contains('`')).then(|| s.replace('\u{0}', "`"))
        }
        None if !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') =>
        {
            Some(t.to_string())
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_attributed_to_their_table() {
        let t = |s: &str| subject(s.as_bytes());
        assert_eq!(t("SET SESSION foreign_key_checks=0"), Subject::Session);
        assert_eq!(
            t("CREATE TABLE `wp_posts` (\n  `ID` bigint(20) unsigned NOT NULL"),
            Subject::Table("wp_posts".into())
        );
        assert_eq!(
            t("ALTER TABLE `we``ird name` ADD KEY `k` (`a`)"),
            Subject::Table("we`ird name".into())
        );
        assert_eq!(
            t("CREATE DEFINER=`root`@`local host` TRIGGER `trg one` BEFORE INSERT ON `orders` FOR EACH ROW SET NEW.total = NEW.qty * 2"),
            Subject::Trigger { name: "trg one".into(), table: "orders".into() }
        );
        assert_eq!(
            t("CREATE TRIGGER t2 AFTER UPDATE ON items FOR EACH ROW FOLLOWS t1 BEGIN END"),
            Subject::Trigger {
                name: "t2".into(),
                table: "items".into()
            }
        );
        assert_eq!(
            t("CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`%` SQL SECURITY DEFINER VIEW `v` AS select 1"),
            Subject::Other
        );
        assert_eq!(
            t("CREATE DEFINER=`root`@`%` PROCEDURE `p`() BEGIN END"),
            Subject::Other
        );
    }

    #[test]
    fn a_filtered_file_keeps_the_session_and_the_selected_tables() {
        let file = "DELIMITER ;;\n-- freezer dump v1: x\nSET NAMES utf8mb4\n;;\nCREATE TABLE `a` (\n  `x` int\n)\n;;\nCREATE TABLE `b` (\n  `x` int\n)\n;;\nSET SESSION sql_mode='x'\n;;\nCREATE DEFINER=`u`@`%` TRIGGER `tb` BEFORE INSERT ON `b` FOR EACH ROW SET NEW.x = 1\n;;\nCREATE TRIGGER `ta` BEFORE INSERT ON `a` FOR EACH ROW SET NEW.x = 1\n;;\nDELIMITER ;\n";
        let only_b: BTreeSet<String> = ["b".to_string()].into();
        let (out, triggers) = filter_file(file.as_bytes(), &only_b);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(triggers, vec!["tb".to_string()]);
        assert!(
            out.contains("CREATE TABLE `b`") && !out.contains("CREATE TABLE `a`"),
            "{out}"
        );
        assert!(
            out.contains("SET NAMES utf8mb4") && out.contains("sql_mode"),
            "{out}"
        );
        assert!(!out.contains("`ta`"), "{out}");
        // The result is a schema file again.
        assert_eq!(statements(out.as_bytes()).len(), 4);
    }
}
