//! The dump's post-data script, split so that a thaw builds the indexes of the loaded
//! tables on several connections at once and beside the verification's reads.
//!
//! `ALTER TABLE … ADD CONSTRAINT … PRIMARY KEY` takes an ACCESS EXCLUSIVE lock for the
//! whole index build, so nothing can read the table meanwhile; and most of a large build
//! is its last part (merging the sorted runs, writing the index, syncing it to disk), on
//! one core. `CREATE UNIQUE INDEX` builds the same index under a SHARE lock, which lets
//! other builds and reads of the table go on; `ADD CONSTRAINT … USING INDEX` then makes
//! it the constraint's in a moment. The catalog ends up as pg_dump describes it (the
//! round-trip tests compare `pg_dump --schema-only` of source and target).
//!
//! Only items in the exact form pg_dump writes with `--quote-all-identifiers`, on a table
//! the snapshot loaded rows into (never a partitioned parent: `USING INDEX` does not
//! apply there), are taken out; everything else runs as written, in its order.

use std::collections::HashMap;

/// The post-data script, split.
#[derive(Debug, Default, PartialEq)]
pub struct PostData {
    /// The settings at the head of the script (`SET …`); a build runs after them.
    pub head: String,
    /// Index builds that need only the loaded rows: the script's own `CREATE [UNIQUE]
    /// INDEX` statements and the unique index of each primary key or unique constraint.
    pub builds: Vec<Build>,
    /// The rest of the script in its order; a constraint whose index is among `builds`
    /// is added `USING INDEX`.
    pub rest: String,
}

#[derive(Debug, PartialEq)]
pub struct Build {
    /// The table, as `"schema"."name"`.
    pub table: String,
    pub sql: String,
}

/// Splits pg_dump's post-data script. `tables` maps the loaded tables (`"schema"."name"`)
/// to their row counts: the largest table's builds come first.
pub fn split(script: &str, tables: &HashMap<String, u64>) -> PostData {
    let mut starts: Vec<usize> = script
        .match_indices("\n--\n-- Name: ")
        .map(|(i, _)| i + 1)
        .collect();
    let Some(&first) = starts.first() else {
        return PostData {
            rest: script.to_string(),
            ..PostData::default()
        };
    };
    starts.push(script.len());
    let mut out = PostData {
        head: script[..first].to_string(),
        rest: script[..first].to_string(),
        builds: Vec::new(),
    };
    for w in starts.windows(2) {
        let item = &script[w[0]..w[1]];
        match early(&body(item), tables) {
            Some((build, attach)) => {
                out.builds.push(build);
                out.rest.push_str(&attach);
            }
            None => out.rest.push_str(item),
        }
    }
    out.builds
        .sort_by_key(|b| std::cmp::Reverse(tables.get(&b.table).copied().unwrap_or(0)));
    out
}

/// An item's statements: its lines but the comments and blank ones.
fn body(item: &str) -> String {
    item.lines()
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The build an item can be, and what stays in its place (nothing for an index).
fn early(body: &str, tables: &HashMap<String, u64>) -> Option<(Build, String)> {
    let loaded = |t: &str| tables.contains_key(t);
    if let Some(rest) = body.strip_prefix("ALTER TABLE ONLY ") {
        // ALTER TABLE ONLY "s"."t"\n    ADD CONSTRAINT "c" PRIMARY KEY ("a", "b");
        let (table, rest) = qualified(rest)?;
        let (name, rest) = ident(rest.strip_prefix("\n    ADD CONSTRAINT ")?)?;
        let (kind, rest) = ["PRIMARY KEY", "UNIQUE"]
            .into_iter()
            .find_map(|k| Some((k, rest.strip_prefix(" ")?.strip_prefix(k)?)))?;
        let columns = rest.strip_prefix(" (")?.strip_suffix(");")?;
        if !loaded(table) || !ident_list(columns) {
            return None;
        }
        let build = Build {
            table: table.to_string(),
            sql: format!("CREATE UNIQUE INDEX {name} ON {table} USING btree ({columns});"),
        };
        let attach = format!(
            "ALTER TABLE ONLY {table}\n    ADD CONSTRAINT {name} {kind} USING INDEX {name};\n\n"
        );
        return Some((build, attach));
    }
    // CREATE [UNIQUE] INDEX "i" ON "s"."t" USING …; on one line ("ON ONLY" is a
    // partitioned table's).
    let rest = body
        .strip_prefix("CREATE INDEX ")
        .or_else(|| body.strip_prefix("CREATE UNIQUE INDEX "))?;
    let (_, rest) = ident(rest)?;
    let (table, rest) = qualified(rest.strip_prefix(" ON ")?)?;
    if !rest.starts_with(" USING ") || !rest.ends_with(';') || rest.contains('\n') || !loaded(table)
    {
        return None;
    }
    Some((
        Build {
            table: table.to_string(),
            sql: body.to_string(),
        },
        String::new(),
    ))
}

/// A quoted identifier at the start of `s` (`"…"`, with `""` for a quote), and the rest.
fn ident(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if b.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return Some((&s[..=i], &s[i + 1..]));
        }
        i += 1;
    }
    None
}

/// `"schema"."name"` at the start of `s`, and the rest.
fn qualified(s: &str) -> Option<(&str, &str)> {
    let (schema, rest) = ident(s)?;
    let (name, rest) = ident(rest.strip_prefix('.')?)?;
    let len = schema.len() + 1 + name.len();
    Some((&s[..len], rest))
}

/// `"a", "b"`: quoted identifiers and nothing else.
fn ident_list(mut s: &str) -> bool {
    loop {
        let Some((_, rest)) = ident(s) else {
            return false;
        };
        if rest.is_empty() {
            return true;
        }
        let Some(rest) = rest.strip_prefix(", ") else {
            return false;
        };
        s = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n\
        SELECT pg_catalog.set_config('search_path', '', false);\n\nSET default_tablespace = '';\n\n";

    fn item(kind: &str, sql: &str) -> String {
        format!("--\n-- Name: x; Type: {kind}; Schema: public; Owner: -\n--\n\n{sql}\n\n\n")
    }

    fn tables() -> HashMap<String, u64> {
        HashMap::from([
            ("\"public\".\"small\"".to_string(), 10),
            ("\"public\".\"big\"".to_string(), 1000),
            ("\"Läden\".\"Posten \"\"1\"\"\"".to_string(), 5),
        ])
    }

    #[test]
    fn constraints_and_indexes_of_loaded_tables_are_built_early_and_the_rest_keeps_its_order() {
        let pk_small = item(
            "CONSTRAINT",
            "ALTER TABLE ONLY \"public\".\"small\"\n    ADD CONSTRAINT \"small_pkey\" PRIMARY KEY (\"id\");",
        );
        let uq_quoted = item(
            "CONSTRAINT",
            "ALTER TABLE ONLY \"Läden\".\"Posten \"\"1\"\"\"\n    ADD CONSTRAINT \"u, \"\"x\"\"\" UNIQUE (\"a\", \"b \"\"c\"\"\");",
        );
        let deferrable = item(
            "CONSTRAINT",
            "ALTER TABLE ONLY \"public\".\"big\"\n    ADD CONSTRAINT \"big_k\" UNIQUE (\"k\") DEFERRABLE;",
        );
        let parent = item(
            "CONSTRAINT",
            "ALTER TABLE ONLY \"public\".\"parted\"\n    ADD CONSTRAINT \"parted_pkey\" PRIMARY KEY (\"id\");",
        );
        let idx_big = item(
            "INDEX",
            "CREATE INDEX \"big_k\" ON \"public\".\"big\" USING btree (\"k\" DESC);",
        );
        let idx_only = item(
            "INDEX",
            "CREATE INDEX \"p_k\" ON ONLY \"public\".\"parted\" USING btree (\"k\");",
        );
        let trigger = item(
            "TRIGGER",
            "CREATE TRIGGER \"t\" BEFORE UPDATE ON \"public\".\"small\" FOR EACH ROW EXECUTE FUNCTION \"public\".\"f\"();",
        );
        let script = [
            HEAD,
            &pk_small,
            &uq_quoted,
            &deferrable,
            &parent,
            &idx_big,
            &idx_only,
            &trigger,
            "--\n-- PostgreSQL database dump complete\n--\n\n",
        ]
        .concat();
        let p = split(&script, &tables());
        assert_eq!(p.head, HEAD);
        assert_eq!(
            p.builds,
            vec![
                Build {
                    table: "\"public\".\"big\"".into(),
                    sql: "CREATE INDEX \"big_k\" ON \"public\".\"big\" USING btree (\"k\" DESC);".into(),
                },
                Build {
                    table: "\"public\".\"small\"".into(),
                    sql: "CREATE UNIQUE INDEX \"small_pkey\" ON \"public\".\"small\" USING btree (\"id\");".into(),
                },
                Build {
                    table: "\"Läden\".\"Posten \"\"1\"\"\"".into(),
                    sql: "CREATE UNIQUE INDEX \"u, \"\"x\"\"\" ON \"Läden\".\"Posten \"\"1\"\"\" USING btree (\"a\", \"b \"\"c\"\"\");".into(),
                },
            ]
        );
        let expected = [
            HEAD,
            "ALTER TABLE ONLY \"public\".\"small\"\n    ADD CONSTRAINT \"small_pkey\" PRIMARY KEY USING INDEX \"small_pkey\";\n\n",
            "ALTER TABLE ONLY \"Läden\".\"Posten \"\"1\"\"\"\n    ADD CONSTRAINT \"u, \"\"x\"\"\" UNIQUE USING INDEX \"u, \"\"x\"\"\";\n\n",
            &deferrable,
            &parent,
            &idx_only,
            &trigger,
            "--\n-- PostgreSQL database dump complete\n--\n\n",
        ]
        .concat();
        assert_eq!(p.rest, expected);
    }

    #[test]
    fn a_script_without_items_or_in_another_form_runs_as_written() {
        let plain = "SET x = 1;\nALTER TABLE ONLY public.small ADD CONSTRAINT small_pkey PRIMARY KEY (id);\n";
        assert_eq!(split(plain, &tables()).rest, plain);
        assert!(split(plain, &tables()).builds.is_empty());
        let unquoted = [
            HEAD,
            &item(
                "CONSTRAINT",
                "ALTER TABLE ONLY public.small\n    ADD CONSTRAINT small_pkey PRIMARY KEY (id);",
            ),
            &item("INDEX", "CREATE INDEX i ON public.small USING btree (k);"),
            &item(
                "CONSTRAINT",
                "ALTER TABLE ONLY \"public\".\"small\"\n    ADD CONSTRAINT \"small_pkey\" PRIMARY KEY (\"id\") INCLUDE (\"v\");",
            ),
        ]
        .concat();
        let p = split(&unquoted, &tables());
        assert!(p.builds.is_empty());
        assert_eq!(p.rest, unquoted);
    }
}
