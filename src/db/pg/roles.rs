//! A database's roles (`--with-users`): those that own its objects or hold privileges on
//! them or on the database, written as `roles.sql`, which creates the missing ones on a
//! target and gives the target database the same owner and grants.
//!
//! Roles are cluster-wide in PostgreSQL, so a role that exists on the target is left as
//! it is (like MySQL's `CREATE USER IF NOT EXISTS`), and no role is made a superuser or
//! given CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS: like MySQL's global privileges,
//! those are the target server's business.

use super::{pg_error, quote_ident, quote_literal, PgUrl};
use crate::error::Result;

/// Every role id that owns a user object of the database (oid ≥ 16384, the first
/// normal object id), holds a privilege on one (or on the database, the public schema or
/// plpgsql), owns the database, or is named by a default privilege or a row security
/// policy. The system catalogs' own grants (to the bootstrap superuser) are not asked.
const ROLE_IDS: &str = "
WITH db AS (SELECT datdba, datacl FROM pg_database WHERE datname = current_database()),
ids(id) AS (
      SELECT datdba FROM db
UNION SELECT (aclexplode(datacl)).grantee FROM db
UNION SELECT nspowner FROM pg_namespace WHERE oid >= 16384
UNION SELECT (aclexplode(nspacl)).grantee FROM pg_namespace WHERE oid >= 16384 OR nspname = 'public'
UNION SELECT relowner FROM pg_class WHERE oid >= 16384
UNION SELECT (aclexplode(relacl)).grantee FROM pg_class WHERE oid >= 16384
UNION SELECT (aclexplode(attacl)).grantee FROM pg_attribute WHERE attrelid >= 16384 AND attacl IS NOT NULL
UNION SELECT proowner FROM pg_proc WHERE oid >= 16384
UNION SELECT (aclexplode(proacl)).grantee FROM pg_proc WHERE oid >= 16384
UNION SELECT typowner FROM pg_type WHERE oid >= 16384
UNION SELECT (aclexplode(typacl)).grantee FROM pg_type WHERE oid >= 16384
UNION SELECT lanowner FROM pg_language WHERE oid >= 16384
UNION SELECT (aclexplode(lanacl)).grantee FROM pg_language WHERE oid >= 16384 OR lanname = 'plpgsql'
UNION SELECT oprowner FROM pg_operator WHERE oid >= 16384
UNION SELECT opcowner FROM pg_opclass WHERE oid >= 16384
UNION SELECT opfowner FROM pg_opfamily WHERE oid >= 16384
UNION SELECT collowner FROM pg_collation WHERE oid >= 16384
UNION SELECT conowner FROM pg_conversion WHERE oid >= 16384
UNION SELECT stxowner FROM pg_statistic_ext
UNION SELECT cfgowner FROM pg_ts_config WHERE oid >= 16384
UNION SELECT dictowner FROM pg_ts_dict WHERE oid >= 16384
UNION SELECT evtowner FROM pg_event_trigger
UNION SELECT defaclrole FROM pg_default_acl
UNION SELECT (aclexplode(defaclacl)).grantee FROM pg_default_acl
UNION SELECT unnest(polroles) FROM pg_policy
)";

/// `roles.sql` and the roles it names.
pub struct Roles {
    pub sql: String,
    pub names: Vec<String>,
    /// Set when the password hashes could not be read (not a superuser): the roles are
    /// created without passwords.
    pub warning: Option<String>,
}

/// The database's roles as of `c`'s snapshot.
pub async fn read(c: &tokio_postgres::Client, url: &PgUrl) -> Result<Roles> {
    let what = |s: &str| format!("{s} of {url}");
    let rows = c
        .query(
            &format!(
                "{ROLE_IDS} SELECT r.rolname::text, r.rolcanlogin, r.rolinherit, r.rolconnlimit, \
                 r.rolvaliduntil::text FROM pg_roles r WHERE r.oid IN (SELECT id FROM ids) \
                 AND r.rolname !~ '^pg_' ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &what("listing the roles")))?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    // pg_authid is readable by superusers only; without it the roles come without
    // passwords, and the report says so. (Asked first: a failed query would abort the
    // dump's transaction.)
    let readable: bool = c
        .query_one(
            "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &what("checking access to the password hashes")))?
        .get(0);
    let mut passwords: Vec<(String, String)> = Vec::new();
    let mut warning = None;
    if readable {
        passwords = c
            .query(
                "SELECT rolname::text, rolpassword FROM pg_authid \
                 WHERE rolname = ANY($1) AND rolpassword IS NOT NULL",
                &[&names],
            )
            .await
            .map_err(|e| pg_error(e, &what("reading the roles' password hashes")))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    } else {
        warning = Some(format!(
            "the password hashes of the roles of {} are readable by a superuser only: the roles were stored without passwords",
            url.database
        ));
    }
    let mut sql = format!(
        "-- The roles that own objects of database {} or hold privileges on them\n\
         -- (freeze --with-users): created when missing, left alone when they exist.\n",
        quote_ident(&url.database)
    );
    for r in &rows {
        let name: String = r.get(0);
        let mut create = format!(
            "CREATE ROLE {} {} {} CONNECTION LIMIT {}",
            quote_ident(&name),
            if r.get(1) { "LOGIN" } else { "NOLOGIN" },
            if r.get(2) { "INHERIT" } else { "NOINHERIT" },
            r.get::<_, i32>(3),
        );
        if let Some(until) = r.get::<_, Option<String>>(4) {
            create += &format!(" VALID UNTIL {}", quote_literal(&until));
        }
        if let Some((_, p)) = passwords.iter().find(|(n, _)| *n == name) {
            create += &format!(" PASSWORD {}", quote_literal(p));
        }
        sql += &format!(
            "DO $freezer$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN {create}; END IF; END$freezer$;\n",
            quote_literal(&name)
        );
    }
    let members = c
        .query(
            "SELECT g.rolname::text, m.rolname::text, a.admin_option FROM pg_auth_members a \
             JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member \
             WHERE g.rolname = ANY($1) AND m.rolname = ANY($1) ORDER BY 1, 2",
            &[&names],
        )
        .await
        .map_err(|e| pg_error(e, &what("listing the role memberships")))?;
    for m in &members {
        sql += &format!(
            "GRANT {} TO {}{};\n",
            quote_ident(m.get(0)),
            quote_ident(m.get(1)),
            if m.get(2) { " WITH ADMIN OPTION" } else { "" }
        );
    }
    sql += &database_grants(c, url).await?;
    Ok(Roles {
        sql,
        names,
        warning,
    })
}

/// The statements that give the database's owner and grants back, for whatever name
/// the target database has.
async fn database_grants(c: &tokio_postgres::Client, url: &PgUrl) -> Result<String> {
    let what = |s: &str| format!("{s} of {url}");
    let mut sql = String::new();
    // Each statement goes through format() with the database's name; a '%' in a role's
    // name is doubled for it.
    let exec = |statement: String| {
        format!(
            "DO $freezer$BEGIN EXECUTE format({}, current_database()); END$freezer$;\n",
            quote_literal(&statement)
        )
    };
    let role = |name: &str| quote_ident(name).replace('%', "%%");
    let owner: String = c
        .query_one(
            "SELECT rolname::text FROM pg_roles, pg_database \
             WHERE datname = current_database() AND pg_roles.oid = datdba",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &what("reading the database's owner")))?
        .get(0);
    if !owner.starts_with("pg_") {
        sql += &exec(format!("ALTER DATABASE %I OWNER TO {}", role(&owner)));
    }
    let grants = c
        .query(
            "SELECT a.privilege_type, g.rolname::text, a.is_grantable \
             FROM pg_database d, aclexplode(d.datacl) a JOIN pg_roles g ON g.oid = a.grantee \
             WHERE d.datname = current_database() AND g.rolname !~ '^pg_' ORDER BY 2, 1",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &what("reading the database's grants")))?;
    for g in &grants {
        let option = if g.get(2) { " WITH GRANT OPTION" } else { "" };
        sql += &exec(format!(
            "GRANT {} ON DATABASE %I TO {}{option}",
            g.get::<_, String>(0),
            role(g.get(1))
        ));
    }
    Ok(sql)
}
