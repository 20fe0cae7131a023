//! Redis servers in a site's containers.
//!
//! Redis keeps its data in memory and writes it to its data directory now and then: an
//! RDB file after `save` rules fire (or never, with `save ""`), and with `appendonly yes`
//! an append-only log. A copy of the volume taken as it is holds whatever was last saved,
//! which can be an hour old or nothing. So before a site's volumes are copied, each Redis
//! server is asked for a point-in-time copy: `BGSAVE`, and the freeze waits until that
//! save has finished and succeeded. The RDB then in the volume is the data set as of the
//! moment the save began (Redis forks; the child writes a temporary file and renames it),
//! and a thaw's server loads it when it starts. An append-only log is copied as it is: it
//! is a prefix of the server's commands, and Redis drops an incomplete transaction at its
//! tail when it loads it (SPEC.md §13.3).
//!
//! The server is reached with the container's own `redis-cli`, as its healthcheck would,
//! with the password from its command line, its config file or its environment, passed
//! in `REDISCLI_AUTH` (never on a command line, never printed).

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

pub use super::pg::tool::Ran;

/// A Redis server found in a container: how to reach it from inside.
#[derive(Clone)]
pub struct Server {
    pub container: String,
    /// `-p PORT`, or `-s SOCKET` when it listens on a Unix socket only.
    pub address: Vec<String>,
    /// The `requirepass` password (a secret: never printed).
    password: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("container", &self.container)
            .field("address", &self.address)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a save left: where, how long it took, and how many keys the server held.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Saved {
    pub container: String,
    /// The RDB file inside the container (`dir`/`dbfilename`), when the server says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub keys: u64,
    pub ms: u64,
}

/// The program names of a Redis server (Valkey is its fork, and answers the same).
const SERVERS: [&str; 2] = ["redis-server", "valkey-server"];

/// The Redis server container `name` runs, if its command runs one: `argv` is its
/// entrypoint and command, `env` its environment, `read_file` reads a file inside it (a
/// config file named on the command line).
pub fn detect(
    name: &str,
    argv: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Result<String>,
) -> Option<Server> {
    let at = argv.iter().position(|a| {
        let base = a.rsplit('/').next().unwrap_or(a);
        SERVERS.contains(&base)
    })?;
    let args = &argv[at + 1..];
    // A config file is the first argument when it is not an option (`redis-server
    // /etc/redis.conf --port 7000`); options on the command line override it.
    let mut settings: Vec<(String, String)> = Vec::new();
    if let Some(file) = args.first().filter(|a| !a.starts_with("--") && *a != "-") {
        if let Ok(text) = read_file(file) {
            settings.extend(config_lines(&text));
        }
    }
    let mut i = 0;
    while i < args.len() {
        if let Some(key) = args[i].strip_prefix("--") {
            let value = args.get(i + 1).filter(|v| !v.starts_with("--"));
            settings.push((key.to_lowercase(), value.cloned().unwrap_or_default()));
            i += 1 + usize::from(value.is_some());
        } else {
            i += 1;
        }
    }
    let last = |key: &str| {
        settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let password = last("requirepass")
        .filter(|p| !p.is_empty())
        // Bitnami's images take it from the environment.
        .or_else(|| env("REDIS_PASSWORD").filter(|p| !p.is_empty()));
    let address = match (last("port").as_deref(), last("unixsocket")) {
        (Some("0"), Some(sock)) => vec!["-s".to_string(), sock],
        (Some(port), _) => vec!["-p".to_string(), port.to_string()],
        (None, _) => vec![],
    };
    Some(Server {
        container: name.to_string(),
        address,
        password,
    })
}

/// `key value` lines of a redis.conf, keys lowercased, quotes around the value removed.
fn config_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            let v = v.trim().trim_matches('"').trim_matches('\'');
            Some((k.to_lowercase(), v.to_string()))
        })
        .collect()
}

impl Server {
    /// Runs `redis-cli` in the container with `args`; its output. `exec` runs a program
    /// in the container (argv, environment).
    fn cli(
        &self,
        exec: &dyn Fn(Vec<String>, Vec<String>) -> Result<Ran>,
        args: &[&str],
    ) -> Result<String> {
        let mut argv = vec!["redis-cli".to_string(), "--no-auth-warning".into()];
        argv.extend(self.address.iter().cloned());
        argv.extend(args.iter().map(|a| a.to_string()));
        let env = self
            .password
            .iter()
            .map(|p| format!("REDISCLI_AUTH={p}"))
            .collect();
        let (code, out, err) = exec(argv, env)?;
        let out = String::from_utf8_lossy(&out).trim().to_string();
        let failed = code != Some(0) || out.starts_with("ERR") || out.starts_with("NOAUTH");
        if failed {
            let err = String::from_utf8_lossy(&err);
            let why = [out.as_str(), err.trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            return Err(Error::other(format!(
                "redis-cli {} in container {}: {why}",
                args.join(" "),
                self.container
            )));
        }
        Ok(out)
    }

    /// Asks the server for a point-in-time copy (`BGSAVE`) and waits until it is on disk,
    /// for at most `timeout`.
    pub fn save(
        &self,
        exec: &dyn Fn(Vec<String>, Vec<String>) -> Result<Ran>,
        timeout: Duration,
    ) -> Result<Saved> {
        let started = Instant::now();
        let wait_done = || -> Result<String> {
            loop {
                let info = self.cli(exec, &["INFO", "persistence"])?;
                if field(&info, "rdb_bgsave_in_progress") == Some("0") {
                    return Ok(info);
                }
                if started.elapsed() > timeout {
                    return Err(Error::other(format!(
                        "Redis in container {} did not finish its save within {} s",
                        self.container,
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        // A save already running began before this freeze: let it finish, then ask for
        // one of our own.
        let mut reply = self.cli(exec, &["BGSAVE"]);
        if reply
            .as_ref()
            .is_err_and(|e| e.message.contains("already in progress"))
        {
            wait_done()?;
            reply = self.cli(exec, &["BGSAVE"]);
        }
        let reply = reply?;
        if !reply.contains("started") && !reply.contains("scheduled") {
            return Err(Error::other(format!(
                "Redis in container {} answered BGSAVE with {reply:?}",
                self.container
            )));
        }
        let info = wait_done()?;
        if field(&info, "rdb_last_bgsave_status") != Some("ok") {
            return Err(Error::other(format!(
                "Redis in container {} could not save its data (rdb_last_bgsave_status: {})",
                self.container,
                field(&info, "rdb_last_bgsave_status").unwrap_or("unknown")
            ))
            .with_hint("its log says why (`docker logs`): often a full disk or a data directory it cannot write"));
        }
        let keys = self
            .cli(exec, &["DBSIZE"])
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // CONFIG can be renamed away; the file is then not named in the report.
        let get = |key: &str| {
            let out = self.cli(exec, &["CONFIG", "GET", key]).ok()?;
            out.lines().nth(1).map(str::to_string)
        };
        let file = match (get("dir"), get("dbfilename")) {
            (Some(dir), Some(name)) => Some(format!("{}/{name}", dir.trim_end_matches('/'))),
            _ => None,
        };
        Ok(Saved {
            container: self.container.clone(),
            file,
            keys,
            ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// The value of `key:value` in Redis's INFO output.
fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn a_server_is_found_with_its_password_and_port() {
        let none = |_: &str| None;
        let no_file = |_: &str| Err(Error::other("no file"));
        let s = detect(
            "c",
            &argv(
                "docker-entrypoint.sh redis-server --appendonly yes --requirepass pw --port 7000",
            ),
            &none,
            &no_file,
        )
        .unwrap();
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.address, argv("-p 7000"));
        assert!(
            !format!("{s:?}").contains("pw\""),
            "the password is not printed"
        );
        assert!(detect("c", &argv("httpd -f"), &none, &no_file).is_none());

        let conf = |_: &str| {
            Ok("# redis\nrequirepass \"from file\"\nport 0\nunixsocket /run/r.sock\n".to_string())
        };
        let s = detect(
            "c",
            &argv("/usr/local/bin/valkey-server /etc/r.conf"),
            &none,
            &conf,
        )
        .unwrap();
        assert_eq!(s.password.as_deref(), Some("from file"));
        assert_eq!(s.address, argv("-s /run/r.sock"));

        let env = |k: &str| (k == "REDIS_PASSWORD").then(|| "bitnami".to_string());
        let s = detect("c", &argv("redis-server"), &env, &no_file).unwrap();
        assert_eq!(s.password.as_deref(), Some("bitnami"));
    }

    #[test]
    fn info_fields() {
        let info = "# Persistence\r\nloading:0\r\nrdb_bgsave_in_progress:1\r\nrdb_last_bgsave_status:ok\r\n";
        assert_eq!(field(info, "rdb_bgsave_in_progress"), Some("1"));
        assert_eq!(field(info, "rdb_last_bgsave_status"), Some("ok"));
        assert_eq!(field(info, "loading"), Some("0"));
        assert_eq!(field(info, "nothing"), None);
    }
}
