//! What a database container's environment says, read as the official images read it:
//! which engine and database (`MARIADB_DATABASE`/`MYSQL_DATABASE`, else PostgreSQL's
//! `POSTGRES_*`), the login a client gets, and where the server keeps its files. The
//! one place that knows these variables; the container adapter only supplies them
//! ([`Env`]).

use super::DbUrl;
use crate::error::Result;

/// A container's environment: the value of a variable, if it has it.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A credential of a container's environment: its value, or the file in the container
/// that holds it and the variable that named the file.
enum Credential {
    Value(String),
    File { var: String, path: String },
}

/// A credential as the official images take it: the variable, or `<VAR>_FILE` naming a
/// file in the container that holds it (a compose secret); the first of `names` set
/// either way.
fn credential(env: Env, names: &[&str]) -> Option<Credential> {
    names.iter().find_map(|n| {
        env(n).map(Credential::Value).or_else(|| {
            env(&format!("{n}_FILE"))
                .filter(|p| !p.is_empty())
                .map(|path| Credential::File {
                    var: format!("{n}_FILE"),
                    path,
                })
        })
    })
}

/// The database the environment names: MariaDB/MySQL's, else PostgreSQL's
/// (`POSTGRES_DB`, else `POSTGRES_USER`, else `postgres`) when a PostgreSQL password is
/// set. None: not a database container, as far as its environment says.
pub fn database_name(env: Env) -> Option<String> {
    let mysql = ["MARIADB_DATABASE", "MYSQL_DATABASE"]
        .iter()
        .find_map(|k| env(k))
        .filter(|d| !d.is_empty());
    mysql.or_else(|| {
        credential(env, &["POSTGRES_PASSWORD"])?;
        Some(
            ["POSTGRES_DB", "POSTGRES_USER"]
                .iter()
                .find_map(|k| env(k))
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "postgres".into()),
        )
    })
}

fn is_postgres(env: Env) -> bool {
    env("MARIADB_DATABASE").is_none() && env("MYSQL_DATABASE").is_none()
}

/// The user and password the environment gives a database client: for MariaDB/MySQL
/// the application user if there is one, else root; for PostgreSQL `POSTGRES_USER`
/// (default `postgres`).
fn login(env: Env) -> Option<(Credential, Credential)> {
    if is_postgres(env) {
        let password = credential(env, &["POSTGRES_PASSWORD"])?;
        let user = credential(env, &["POSTGRES_USER"])
            .filter(|u| !matches!(u, Credential::Value(v) if v.is_empty()))
            .unwrap_or_else(|| Credential::Value("postgres".into()));
        return Some((user, password));
    }
    let user = credential(env, &["MARIADB_USER", "MYSQL_USER"])
        .filter(|u| !matches!(u, Credential::Value(v) if v.is_empty()));
    let password = credential(env, &["MARIADB_PASSWORD", "MYSQL_PASSWORD"]);
    match (user, password) {
        (Some(u), Some(p)) => Some((u, p)),
        _ => Some((
            Credential::Value("root".into()),
            credential(env, &["MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD"])?,
        )),
    }
}

/// Whether the environment gives a database client a login (see [`url`]).
pub fn has_login(env: Env) -> bool {
    login(env).is_some()
}

/// The endpoint of database `database` of container `name` at `address`, with the login
/// its environment gives. A credential kept in a file (`MARIADB_ROOT_PASSWORD_FILE=
/// /run/secrets/db-password`) is read with `read_file` (in the running container),
/// trailing newlines dropped as the images' entrypoints do; never printed. None: its
/// environment names no database or no login.
pub fn url(
    env: Env,
    name: &str,
    database: &str,
    address: &str,
    read_file: &dyn Fn(&str) -> Result<String>,
) -> Result<Option<DbUrl>> {
    let Some((user, password)) = login(env) else {
        return Ok(None);
    };
    let get = |c: Credential| -> Result<String> {
        match c {
            Credential::Value(v) => Ok(v),
            Credential::File { var, path } => read_file(&path)
                .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    crate::error::prefix(e, &format!("reading {var} of container {name}"))
                }),
        }
    };
    let (user, password) = (get(user)?, get(password)?);
    Ok(Some(if is_postgres(env) {
        DbUrl::from_postgres(super::pg::PgUrl::from_parts(
            address, 5432, &user, &password, database,
        ))
    } else {
        DbUrl::from_parts(address, 3306, &user, &password, database)
    }))
}

/// Where the server keeps its files, as the images do: `/var/lib/mysql`; for
/// PostgreSQL `PGDATA`, else `/var/lib/postgresql/data`.
pub fn data_dir(env: Env) -> String {
    if is_postgres(env) {
        env("PGDATA")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/var/lib/postgresql/data".into())
    } else {
        "/var/lib/mysql".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn no_files(path: &str) -> Result<String> {
        Err(crate::error::Error::not_found(format!("no file {path}")))
    }

    #[test]
    fn mariadb_gives_the_application_user_else_root() {
        let env = env_of(&[
            ("MARIADB_DATABASE", "shop"),
            ("MARIADB_USER", "app"),
            ("MARIADB_PASSWORD", "pw"),
            ("MARIADB_ROOT_PASSWORD", "rootpw"),
        ]);
        assert_eq!(database_name(&env).as_deref(), Some("shop"));
        let u = url(&env, "c", "shop", "10.0.0.2", &no_files)
            .unwrap()
            .unwrap();
        assert_eq!(u.to_string(), "mysql://app@10.0.0.2:3306/shop");
        assert_eq!(data_dir(&env), "/var/lib/mysql");

        let env = env_of(&[("MYSQL_DATABASE", "shop"), ("MYSQL_ROOT_PASSWORD", "r")]);
        let u = url(&env, "c", "shop", "10.0.0.2", &no_files)
            .unwrap()
            .unwrap();
        assert_eq!(u.user(), "root");
        // A database but no password at all: no login.
        let env = env_of(&[("MARIADB_DATABASE", "shop")]);
        assert!(!has_login(&env));
        assert!(url(&env, "c", "shop", "h", &no_files).unwrap().is_none());
    }

    #[test]
    fn a_secret_file_is_read_in_the_container_without_its_newline() {
        let env = env_of(&[
            ("MARIADB_DATABASE", "shop"),
            ("MARIADB_ROOT_PASSWORD_FILE", "/run/secrets/db"),
        ]);
        let read = |p: &str| {
            assert_eq!(p, "/run/secrets/db");
            Ok("s3cret\n".to_string())
        };
        let u = url(&env, "c", "shop", "h", &read).unwrap().unwrap();
        assert_eq!(u.user(), "root");
        assert!(!format!("{u} {u:?}").contains("s3cret"), "a password shown");
        // A file that cannot be read names the variable and the container.
        let e = url(&env, "site-db-1", "shop", "h", &no_files).unwrap_err();
        assert!(
            e.message.contains("MARIADB_ROOT_PASSWORD_FILE") && e.message.contains("site-db-1"),
            "{e}"
        );
    }

    #[test]
    fn postgres_is_known_by_its_password_and_defaults_as_the_image_does() {
        let env = env_of(&[("POSTGRES_PASSWORD", "pw")]);
        assert_eq!(database_name(&env).as_deref(), Some("postgres"));
        let u = url(&env, "c", "postgres", "10.0.0.3", &no_files)
            .unwrap()
            .unwrap();
        assert_eq!(u.to_string(), "postgres://postgres@10.0.0.3:5432/postgres");
        assert_eq!(data_dir(&env), "/var/lib/postgresql/data");

        let env = env_of(&[
            ("POSTGRES_PASSWORD", "pw"),
            ("POSTGRES_USER", "app"),
            ("PGDATA", "/data/pg"),
        ]);
        assert_eq!(database_name(&env).as_deref(), Some("app"));
        assert_eq!(data_dir(&env), "/data/pg");
        // Not a database container at all.
        assert_eq!(database_name(&env_of(&[("PATH", "/bin")])), None);
    }
}
