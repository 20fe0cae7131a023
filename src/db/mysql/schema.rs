//! The objects of a database and the SQL files that recreate them.
//!
//! A dump has three schema files, loaded in this order around the data chunks:
//! `schema.sql` (tables without their secondary indexes), the data, `indexes.sql` (one
//! `ALTER TABLE … ADD KEY …` per table, so indexes are built once, sorted, after the
//! rows are in), and `objects.sql` (foreign keys, routines, views in dependency order,
//! triggers, events, each with the sql_mode it was created under).

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use super::conn::{exec, exec_strings, query_strings};
use super::sql::{ident, string_literal, ColumnKind};
use crate::error::{Error, Result};

/// The session settings every data chunk and schema file is loaded under. Not strict,
/// like mysqldump's files: a value the source accepted must load, zero dates included;
/// the checksums after loading catch anything that did not load exactly.
pub const LOAD_SQL_MODE: &str = "NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub data_type: String,
}

impl Column {
    pub fn kind(&self) -> ColumnKind {
        ColumnKind::from_data_type(&self.data_type)
    }
}

#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub engine: String,
    /// Dumped columns, in order: every column except generated ones.
    pub columns: Vec<Column>,
    /// The columns of the primary key, or of a unique key over NOT NULL columns; empty
    /// when the table has neither.
    pub key: Vec<String>,
    pub auto_increment_column: Option<String>,
    pub create: String,
    pub est_rows: u64,
    pub est_bytes: u64,
}

impl Table {
    /// A key of one integer column (cut into chunks by value ranges).
    pub fn integer_key(&self) -> bool {
        self.key.len() == 1
            && self.columns.iter().any(|c| {
                c.name == self.key[0]
                    && matches!(
                        c.data_type.to_ascii_lowercase().as_str(),
                        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
                    )
            })
    }

    /// Whether rows are read inside the shared consistent snapshot. Other engines
    /// (MyISAM, Aria, MEMORY, …) are read while the site's tables are locked.
    pub fn transactional(&self) -> bool {
        transactional(&self.engine)
    }
}

/// Whether tables of this engine roll back (and so read consistently in a transaction).
pub fn transactional(engine: &str) -> bool {
    matches!(
        engine.to_ascii_lowercase().as_str(),
        "innodb" | "xtradb" | "rocksdb" | "tokudb"
    )
}

/// A view, trigger, routine or event: its CREATE statement and the session it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub kind: String,
    pub name: String,
    #[serde(skip)]
    pub create: String,
    #[serde(skip)]
    pub sql_mode: String,
    #[serde(skip)]
    pub charset_client: String,
    #[serde(skip)]
    pub collation_connection: String,
    #[serde(skip)]
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub charset: String,
    pub collation: String,
    pub tables: Vec<Table>,
    /// Routines, views (in dependency order), triggers, events.
    pub objects: Vec<Object>,
    /// Sequences and other kinds freezer does not dump yet, by name.
    pub skipped: Vec<String>,
}

impl Schema {
    /// Everything that must not change while a dump runs, for the DDL check: table
    /// definitions without their AUTO_INCREMENT counters (which inserts move), and every
    /// object's text.
    pub fn fingerprint(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for t in &self.tables {
            m.insert(format!("table {}", t.name), strip_auto_increment(&t.create));
        }
        for o in &self.objects {
            m.insert(format!("{} {}", o.kind, o.name), o.create.clone());
        }
        m
    }
}

fn strip_auto_increment(create: &str) -> String {
    let mut out = String::with_capacity(create.len());
    let mut rest = create;
    while let Some(i) = rest.find(" AUTO_INCREMENT=") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " AUTO_INCREMENT=".len()..];
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// Reads every object of `db`. The connection's default database becomes `db`, which
/// makes the server print view definitions without the database name, so they load
/// into a database of another name.
pub async fn read_schema(conn: &mut Conn, db: &str) -> Result<Schema> {
    let what = |s: &str| format!("reading the schema of {}: {s}", ident(db));
    let p = || vec![mysql_async::Value::from(db)];
    let cs = exec_strings(
        conn,
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        p(),
        &what("SCHEMATA"),
    )
    .await?;
    let Some(cs) = cs.into_iter().next() else {
        return Err(
            Error::not_found(format!("database {} does not exist", ident(db)))
                .with_hint("check the database name in the URL, and that the user may see it"),
        );
    };
    exec(conn, &format!("USE {}", ident(db)), &what("USE")).await?;

    let listed = exec_strings(
        conn,
        "SELECT TABLE_NAME, TABLE_TYPE, COALESCE(ENGINE, ''), COALESCE(TABLE_ROWS, 0), COALESCE(DATA_LENGTH, 0) \
         FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
        p(),
        &what("TABLES"),
    )
    .await?;
    let cols = read_columns(conn, db).await?;
    let stats = exec_strings(
        conn,
        "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SEQ_IN_INDEX, COALESCE(SUB_PART, 0) \
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
        p(),
        &what("STATISTICS"),
    )
    .await?;

    let mut tables = Vec::new();
    let mut views = Vec::new();
    let mut skipped = Vec::new();
    for r in &listed {
        let (name, ttype) = (&r[0], r[1].as_str());
        match ttype {
            "BASE TABLE" | "SYSTEM VERSIONED" => {}
            "VIEW" => {
                views.push(name.clone());
                continue;
            }
            _ => {
                skipped.push(format!("{} {name}", ttype.to_lowercase()));
                continue;
            }
        }
        let (columns, nullable, auto_increment_column) = table_columns(&cols, name);
        let key = choose_key(stats.iter().filter(|s| &s[0] == name), &nullable, &columns);
        let create = show_create(conn, "TABLE", name, 1).await?;
        tables.push(Table {
            name: name.clone(),
            engine: r[2].clone(),
            columns,
            key,
            auto_increment_column,
            create,
            est_rows: r[3].parse().unwrap_or(0),
            est_bytes: r[4].parse().unwrap_or(0),
        });
    }

    let objects = read_objects(conn, db, &views).await?;
    Ok(Schema {
        charset: cs[0].clone(),
        collation: cs[1].clone(),
        tables,
        objects,
        skipped,
    })
}

/// Every column of every table of `db`: table, column, type, nullable, extra, and
/// whether it is generated (`ALWAYS`) or not (`NEVER`).
async fn read_columns(conn: &mut Conn, db: &str) -> Result<Vec<Vec<String>>> {
    let what = |s: &str| format!("reading the schema of {}: {s}", ident(db));
    let p = || vec![mysql_async::Value::from(db)];
    let cols = exec_strings(
        conn,
        "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, IS_NULLABLE, EXTRA, COALESCE(IS_GENERATED, 'NEVER') \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
        p(),
        &what("COLUMNS"),
    )
    .await
    .or_else(|_| Ok::<_, Error>(Vec::new()))?;
    Ok(if cols.is_empty() {
        // MySQL has no IS_GENERATED column; GENERATION_EXPRESSION tells the same.
        exec_strings(
            conn,
            "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, IS_NULLABLE, EXTRA, \
             IF(COALESCE(GENERATION_EXPRESSION, '') = '', 'NEVER', 'ALWAYS') \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
            p(),
            &what("COLUMNS"),
        )
        .await?
    } else {
        cols
    })
}

/// Table `name`'s stored columns (generated ones are computed again on load), the
/// nullable ones, and its auto-increment column.
fn table_columns(
    cols: &[Vec<String>],
    name: &str,
) -> (Vec<Column>, BTreeSet<String>, Option<String>) {
    let mut columns = Vec::new();
    let mut nullable = BTreeSet::new();
    let mut auto_increment_column = None;
    for c in cols.iter().filter(|c| c[0] == name) {
        if c[3] == "YES" {
            nullable.insert(c[1].clone());
        }
        if c[4].to_ascii_lowercase().contains("auto_increment") {
            auto_increment_column = Some(c[1].clone());
        }
        if c[5] == "ALWAYS" {
            continue;
        }
        columns.push(Column {
            name: c[1].clone(),
            data_type: c[2].clone(),
        });
    }
    (columns, nullable, auto_increment_column)
}

/// The routines, views (in dependency order), triggers and events of `db` (the
/// connection's default database), in load order.
async fn read_objects(conn: &mut Conn, db: &str, views: &[String]) -> Result<Vec<Object>> {
    let what = |s: &str| format!("reading the schema of {}: {s}", ident(db));
    let p = || vec![mysql_async::Value::from(db)];
    let mut objects = Vec::new();
    // Routines first: views may call stored functions, and the server checks that they
    // exist when the view is created.
    for r in exec_strings(
        conn,
        "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? \
         AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION') ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
        p(),
        &what("ROUTINES"),
    )
    .await?
    {
        objects.push(show_object(conn, &r[0], &r[1]).await?);
    }
    let mut view_objs = Vec::new();
    for v in views {
        let create = show_create(conn, "VIEW", v, 1).await?;
        let meta = exec_strings(
            conn,
            "SELECT COLLATION_CONNECTION, CHARACTER_SET_CLIENT FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            vec![db.into(), v.as_str().into()],
            &what("VIEWS"),
        )
        .await?;
        view_objs.push(Object {
            kind: "view".into(),
            name: v.clone(),
            create,
            sql_mode: String::new(),
            charset_client: meta
                .first()
                .map(|m| m[1].clone())
                .unwrap_or_else(|| "utf8mb4".into()),
            collation_connection: meta
                .first()
                .map(|m| m[0].clone())
                .unwrap_or_else(|| "utf8mb4_general_ci".into()),
            time_zone: None,
        });
    }
    objects.extend(order_views(view_objs));
    for r in exec_strings(
        conn,
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? \
         ORDER BY EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_TIMING, ACTION_ORDER",
        p(),
        &what("TRIGGERS"),
    )
    .await?
    {
        objects.push(show_object(conn, "TRIGGER", &r[0]).await?);
    }
    let events = exec_strings(
        conn,
        "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY EVENT_NAME",
        p(),
        &what("EVENTS"),
    )
    .await?;
    for r in events {
        objects.push(show_object(conn, "EVENT", &r[0]).await?);
    }
    Ok(objects)
}

/// The primary key, else the first unique key (by name) whose columns are all NOT NULL
/// and whole (no prefix): the rows it orders are exactly the table's rows.
fn choose_key<'a>(
    stats: impl Iterator<Item = &'a Vec<String>>,
    nullable: &BTreeSet<String>,
    columns: &[Column],
) -> Vec<String> {
    let mut indexes: BTreeMap<String, (bool, Vec<String>, bool)> = BTreeMap::new();
    for s in stats {
        let e = indexes
            .entry(s[1].clone())
            .or_insert((s[2] == "0", Vec::new(), true));
        let usable =
            !nullable.contains(&s[3]) && s[5] == "0" && columns.iter().any(|c| c.name == s[3]);
        e.2 &= usable;
        e.1.push(s[3].clone());
    }
    if let Some((true, cols, true)) = indexes.get("PRIMARY") {
        return cols.clone();
    }
    indexes
        .into_values()
        .find(|(unique, _, usable)| *unique && *usable)
        .map(|(_, cols, _)| cols)
        .unwrap_or_default()
}

async fn show_create(conn: &mut Conn, kind: &str, name: &str, col: usize) -> Result<String> {
    let rows = query_strings(
        conn,
        &format!("SHOW CREATE {kind} {}", ident(name)),
        &format!(
            "reading the definition of {} {}",
            kind.to_lowercase(),
            ident(name)
        ),
    )
    .await?;
    rows.into_iter()
        .next()
        .and_then(|r| r.into_iter().nth(col))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::other(format!(
                "the server did not show the definition of {} {}",
                kind.to_lowercase(),
                ident(name)
            ))
        })
}

/// SHOW CREATE for triggers, routines and events, whose result rows carry the sql_mode
/// and collation the object was created under.
async fn show_object(conn: &mut Conn, kind: &str, name: &str) -> Result<Object> {
    let rows = query_strings(
        conn,
        &format!("SHOW CREATE {kind} {}", ident(name)),
        &format!(
            "reading the definition of {} {}",
            kind.to_lowercase(),
            ident(name)
        ),
    )
    .await?;
    let r = rows.into_iter().next().unwrap_or_default();
    // Columns: name, sql_mode, [time_zone for events,] statement, character_set_client,
    // collation_connection, database collation.
    let (create, client, coll, tz) = match kind {
        "EVENT" => (r.get(3), r.get(4), r.get(5), r.get(2).cloned()),
        _ => (r.get(2), r.get(3), r.get(4), None),
    };
    let create = create.cloned().unwrap_or_default();
    if create.is_empty() {
        return Err(Error::other(format!(
            "the server shows no definition for {} {}",
            kind.to_lowercase(),
            ident(name)
        ))
        .with_hint(
            "the database user may not read it: grant SHOW_ROUTINE (or SELECT on mysql.proc), TRIGGER and EVENT on the database",
        ));
    }
    Ok(Object {
        kind: kind.to_lowercase(),
        name: name.to_string(),
        create,
        sql_mode: r.get(1).cloned().unwrap_or_default(),
        charset_client: client.cloned().unwrap_or_else(|| "utf8mb4".into()),
        collation_connection: coll.cloned().unwrap_or_else(|| "utf8mb4_general_ci".into()),
        time_zone: tz,
    })
}

/// Views that use other views come after them. An edge is assumed wherever a view's
/// text holds another view's quoted name; a false edge only adds order. A cycle (which
/// the server would not allow) falls back to name order.
fn order_views(views: Vec<Object>) -> Vec<Object> {
    let names: Vec<String> = views.iter().map(|v| ident(&v.name)).collect();
    let mut deps: Vec<BTreeSet<usize>> = views
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let body = v.create.split_once(" AS ").map_or("", |(_, b)| b);
            (0..views.len())
                .filter(|&j| j != i && body.contains(&names[j]))
                .collect()
        })
        .collect();
    let mut done = vec![false; views.len()];
    let mut order = Vec::new();
    while order.len() < views.len() {
        let next = (0..views.len())
            .find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
            .or_else(|| (0..views.len()).find(|&i| !done[i]))
            .expect("some view is left");
        done[next] = true;
        deps[next].clear();
        order.push(next);
    }
    let mut slots: Vec<Option<Object>> = views.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each once"))
        .collect()
}

/// A CREATE TABLE split into what is created before the data and what is added after.
struct SplitTable {
    create: String,
    /// `ADD KEY …` items for indexes.sql.
    indexes: Vec<String>,
    /// `ADD CONSTRAINT … FOREIGN KEY …` items for objects.sql.
    foreign_keys: Vec<String>,
}

/// Moves secondary indexes and foreign keys out of a SHOW CREATE TABLE text. Kept
/// inline: the primary key, FULLTEXT and SPATIAL indexes, CHECK constraints, and any
/// index that starts with the AUTO_INCREMENT column (the server requires one). A text
/// that does not have the expected one-item-per-line shape is kept whole.
fn split_table(t: &Table) -> SplitTable {
    let whole = SplitTable {
        create: t.create.clone(),
        indexes: vec![],
        foreign_keys: vec![],
    };
    let lines: Vec<&str> = t.create.lines().collect();
    let Some(close) = lines.iter().rposition(|l| l.starts_with(')')) else {
        return whole;
    };
    if close < 2 || !lines[0].ends_with('(') || !lines[1..close].iter().all(|l| l.starts_with("  "))
    {
        return whole;
    }
    let auto_first = t
        .auto_increment_column
        .as_ref()
        .map(|c| format!("({}", ident(c)));
    let mut kept = Vec::new();
    let mut indexes = Vec::new();
    let mut foreign_keys = Vec::new();
    for l in &lines[1..close] {
        let item = l.trim().trim_end_matches(',');
        let is_index = item.starts_with("KEY ") || item.starts_with("UNIQUE KEY ");
        let starts_with_auto = auto_first
            .as_ref()
            .is_some_and(|a| item.contains(&format!("{a},")) || item.contains(&format!("{a})")));
        if is_index && !starts_with_auto {
            indexes.push(format!("ADD {item}"));
        } else if item.starts_with("CONSTRAINT ") && item.contains(" FOREIGN KEY ") {
            foreign_keys.push(format!("ADD {item}"));
        } else {
            kept.push(format!("  {item}"));
        }
    }
    if kept.is_empty() {
        return whole;
    }
    let mut create = String::new();
    create.push_str(lines[0]);
    create.push('\n');
    create.push_str(&kept.join(",\n"));
    create.push('\n');
    create.push_str(&lines[close..].join("\n"));
    SplitTable {
        create,
        indexes,
        foreign_keys,
    }
}

fn file_header(out: &mut String, title: &str) {
    out.push_str("DELIMITER ;;\n");
    out.push_str(&format!("-- freezer dump v1: {title}\n"));
}

fn stmt(out: &mut String, s: &str) {
    out.push_str(s);
    out.push_str("\n;;\n");
}

/// The three schema files: (schema.sql, indexes.sql, objects.sql).
pub fn schema_files(s: &Schema) -> (String, String, String) {
    let mut schema = String::new();
    file_header(&mut schema, "tables, created before the data");
    stmt(&mut schema, "SET NAMES utf8mb4");
    stmt(
        &mut schema,
        &format!("SET SESSION sql_mode={}", string_literal(LOAD_SQL_MODE)),
    );
    stmt(&mut schema, "SET SESSION foreign_key_checks=0");
    let mut indexes = String::new();
    file_header(&mut indexes, "secondary indexes, added after the data");
    stmt(&mut indexes, "SET NAMES utf8mb4");
    stmt(
        &mut indexes,
        &format!("SET SESSION sql_mode={}", string_literal(LOAD_SQL_MODE)),
    );
    stmt(&mut indexes, "SET SESSION foreign_key_checks=0");
    let mut objects = String::new();
    file_header(
        &mut objects,
        "foreign keys, routines, views, triggers and events, added last",
    );
    stmt(&mut objects, "SET NAMES utf8mb4");
    stmt(&mut objects, "SET SESSION foreign_key_checks=0");

    for t in &s.tables {
        let split = split_table(t);
        stmt(&mut schema, &split.create);
        if !split.indexes.is_empty() {
            stmt(
                &mut indexes,
                &format!(
                    "ALTER TABLE {} {}",
                    ident(&t.name),
                    split.indexes.join(", ")
                ),
            );
        }
        if !split.foreign_keys.is_empty() {
            stmt(
                &mut objects,
                &format!(
                    "ALTER TABLE {} {}",
                    ident(&t.name),
                    split.foreign_keys.join(", ")
                ),
            );
        }
    }
    for o in &s.objects {
        stmt(
            &mut objects,
            &format!("SET SESSION sql_mode={}", string_literal(&o.sql_mode)),
        );
        // The text is UTF-8; the object's own client charset is kept when it reads
        // UTF-8 the same way (or the text is ASCII), so SHOW CREATE shows it unchanged.
        let utf8 = ["utf8mb4", "utf8mb3", "utf8"].contains(&o.charset_client.as_str());
        let client = if utf8 || o.create.is_ascii() {
            o.charset_client.as_str()
        } else {
            "utf8mb4"
        };
        stmt(
            &mut objects,
            &format!(
                "SET SESSION character_set_client={}, collation_connection={}",
                string_literal(client),
                string_literal(&o.collation_connection)
            ),
        );
        if let Some(tz) = &o.time_zone {
            stmt(
                &mut objects,
                &format!("SET SESSION time_zone={}", string_literal(tz)),
            );
        }
        stmt(&mut objects, &o.create);
    }
    for f in [&mut schema, &mut indexes, &mut objects] {
        f.push_str("DELIMITER ;\n");
    }
    (schema, indexes, objects)
}

/// The accounts that hold privileges on `db` (as far as the dumping user may see) with
/// their CREATE USER statement (which carries the password hash) and their grants on
/// `db` only: global grants are never copied to another server.
pub async fn read_users(conn: &mut Conn, db: &str) -> Result<(Vec<String>, String)> {
    let p = || vec![mysql_async::Value::from(db)];
    let what = format!("reading the accounts with privileges on {}", ident(db));
    let grantees = exec_strings(
        conn,
        "SELECT GRANTEE FROM information_schema.SCHEMA_PRIVILEGES WHERE TABLE_SCHEMA = ? \
         UNION SELECT GRANTEE FROM information_schema.TABLE_PRIVILEGES WHERE TABLE_SCHEMA = ? \
         UNION SELECT GRANTEE FROM information_schema.COLUMN_PRIVILEGES WHERE TABLE_SCHEMA = ? ORDER BY 1",
        vec![p()[0].clone(), p()[0].clone(), p()[0].clone()],
        &what,
    )
    .await?;
    let mut out = String::new();
    file_header(
        &mut out,
        "accounts with privileges on the database (loaded only on request)",
    );
    stmt(&mut out, "SET NAMES utf8mb4");
    let mut accounts = Vec::new();
    let scope = format!("{}.", ident(db));
    for g in grantees {
        // 'user'@'host'; roles (no host) are not copied.
        let Some((user, host)) = g[0].split_once("'@'") else {
            continue;
        };
        let account = format!(
            "{}@{}",
            string_literal(user.trim_start_matches('\'')),
            string_literal(host.trim_end_matches('\''))
        );
        let create = query_strings(conn, &format!("SHOW CREATE USER {account}"), &what)
            .await
            .map_err(|mut e| {
                e.hint = Some(format!(
                    "--with-users needs a user that may read other accounts (SELECT on mysql.* or CREATE USER) on {}",
                    ident(db)
                ));
                e
            })?;
        let Some(create) = create.first().and_then(|r| r.first()) else {
            continue;
        };
        stmt(
            &mut out,
            &create.replacen("CREATE USER ", "CREATE USER IF NOT EXISTS ", 1),
        );
        for r in query_strings(conn, &format!("SHOW GRANTS FOR {account}"), &what).await? {
            if r[0].starts_with("GRANT ") && r[0].contains(&scope) {
                stmt(&mut out, &r[0]);
            }
        }
        accounts.push(g[0].clone());
    }
    out.push_str("DELIMITER ;\n");
    Ok((accounts, out))
}

/// The statement without its `DEFINER=…` clause, for a target where the loading user may
/// not create objects on behalf of another account; the object is then owned by the
/// loading user. None when there is no such clause.
pub fn strip_definer(stmt: &str) -> Option<String> {
    let start = stmt.find("DEFINER=")?;
    let mut rest = &stmt[start + "DEFINER=".len()..];
    // user@host, each part backquoted or bare.
    for part in 0..2 {
        if let Some(r) = rest.strip_prefix('`') {
            let end = r.find('`')?;
            rest = &r[end + 1..];
        } else {
            let end = rest.find(['@', ' '])?;
            rest = &rest[end..];
        }
        if part == 0 {
            rest = rest.strip_prefix('@')?;
        }
    }
    Some(format!("{}{}", &stmt[..start], rest.trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(create: &str, auto: Option<&str>) -> Table {
        Table {
            name: "t".into(),
            engine: "InnoDB".into(),
            columns: vec![],
            key: vec![],
            auto_increment_column: auto.map(String::from),
            create: create.into(),
            est_rows: 0,
            est_bytes: 0,
        }
    }

    #[test]
    fn secondary_indexes_and_foreign_keys_move_out() {
        let t = table(
            "CREATE TABLE `t` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `a` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n  KEY `a` (`a`),\n  FULLTEXT KEY `f` (`b`),\n  CONSTRAINT `fk` FOREIGN KEY (`a`) REFERENCES `p` (`id`)\n) ENGINE=InnoDB",
            Some("id"),
        );
        let s = split_table(&t);
        assert_eq!(
            s.create,
            "CREATE TABLE `t` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `a` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n  FULLTEXT KEY `f` (`b`)\n) ENGINE=InnoDB"
        );
        assert_eq!(s.indexes, vec!["ADD KEY `a` (`a`)"]);
        assert_eq!(
            s.foreign_keys,
            vec!["ADD CONSTRAINT `fk` FOREIGN KEY (`a`) REFERENCES `p` (`id`)"]
        );
        // The index the AUTO_INCREMENT column needs stays.
        let t = table(
            "CREATE TABLE `t` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  KEY `id` (`id`)\n) ENGINE=InnoDB",
            Some("id"),
        );
        assert!(split_table(&t).indexes.is_empty());
    }

    #[test]
    fn definers() {
        assert_eq!(
            strip_definer("CREATE DEFINER=`u`@`%` TRIGGER x").as_deref(),
            Some("CREATE TRIGGER x")
        );
        assert_eq!(
            strip_definer("CREATE ALGORITHM=UNDEFINED DEFINER=`a`@`localhost` SQL SECURITY DEFINER VIEW `v` AS select 1").as_deref(),
            Some("CREATE ALGORITHM=UNDEFINED SQL SECURITY DEFINER VIEW `v` AS select 1")
        );
        assert_eq!(strip_definer("CREATE TABLE t"), None);
        assert_eq!(
            strip_auto_increment("ENGINE=InnoDB AUTO_INCREMENT=42 DEFAULT"),
            "ENGINE=InnoDB DEFAULT"
        );
    }
}
