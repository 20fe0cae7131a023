//! `ssh://` engines: the system's `ssh` forwards a local socket to the engine's socket on
//! the remote host (`ssh -L LOCAL:REMOTE`), so the user's keys, agent, `~/.ssh/config`
//! and known hosts apply as they do for the docker CLI. `FREEZER_SSH_COMMAND` replaces
//! `ssh` (as `GIT_SSH_COMMAND` does for git), e.g. to name a key.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// How long ssh may take to connect and set up the forward.
const CONNECT: Duration = Duration::from_secs(30);

/// A running `ssh -L`; closed (the process ended) when dropped.
pub struct Tunnel {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// `ssh://[USER@]HOST[:PORT][/SOCKET]` → (destination, port, remote socket).
fn parse(url: &str) -> Result<(String, Option<u16>, String)> {
    let bad = || {
        Error::usage(format!(
            "Docker endpoint {url} is not ssh://[USER@]HOST[:PORT][/SOCKET]"
        ))
    };
    let rest = url.strip_prefix("ssh://").ok_or_else(bad)?;
    let (authority, socket) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/var/run/docker.sock".to_string()),
    };
    let (user_host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
        None => (authority, None),
    };
    let host = user_host.rsplit('@').next().unwrap_or("");
    // A destination that starts with '-' would be read by ssh as an option.
    if host.is_empty() || user_host.starts_with('-') || socket == "/" {
        return Err(bad());
    }
    Ok((user_host.to_string(), port, socket))
}

impl Tunnel {
    pub fn open(url: &str) -> Result<Tunnel> {
        let (dest, port, remote) = parse(url)?;
        let dir = crate::sys::temp_dir("a directory for the SSH tunnel's socket")?;
        let socket = dir.path().join("docker.sock");
        let log = dir.path().join("ssh.log");
        let mut args: Vec<String> = vec![
            "-nNT".into(),
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ServerAliveInterval=30".into(),
        ];
        if let Some(p) = port {
            args.extend(["-p".into(), p.to_string()]);
        }
        args.extend([
            "-L".into(),
            format!("{}:{remote}", socket.display()),
            "--".into(),
            dest,
        ]);
        let mut cmd = match std::env::var("FREEZER_SSH_COMMAND")
            .ok()
            .filter(|c| !c.trim().is_empty())
        {
            Some(c) => {
                let mut cmd = Command::new("sh");
                // exec: the tunnel is the process freezer ends, not a shell around it.
                cmd.arg("-c").arg(format!("exec {c} \"$@\"")).arg("ssh");
                cmd
            }
            None => Command::new("ssh"),
        };
        let stderr = std::fs::File::create(&log)
            .map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        // The tunnel ends with freezer even when it is not dropped (an interrupt exits the
        // process from its handler thread).
        crate::sys::end_with_parent(&mut cmd);
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unreachable,
                    format!("could not run ssh to reach the Docker engine at {url}: {e}"),
                )
                .with_hint("install the OpenSSH client, or set FREEZER_SSH_COMMAND")
            })?;
        let mut tunnel = Tunnel {
            child,
            socket,
            _dir: dir,
        };
        tunnel.wait_ready(url, &log)?;
        Ok(tunnel)
    }

    /// Waits until the forwarded socket exists, or ssh gave up (its message says why).
    fn wait_ready(&mut self, url: &str, log: &Path) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.socket.exists() {
                return Ok(());
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > CONNECT {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                let said = said.trim();
                return Err(Error::new(
                    ErrorKind::Unreachable,
                    format!(
                        "the SSH tunnel to the Docker engine at {url} did not come up{}",
                        match (exited, said.is_empty()) {
                            (_, false) => format!(": {said}"),
                            (Some(st), true) => format!(" (ssh {st})"),
                            (None, true) => format!(" within {}s", CONNECT.as_secs()),
                        }
                    ),
                )
                .with_hint("check that `ssh HOST` logs in without a prompt (key or agent; the host in known_hosts) and that this user may use the engine's socket there"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The local end of the tunnel.
    pub fn socket(&self) -> &str {
        self.socket.to_str().unwrap_or_default()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn ssh_endpoints_parse() {
        assert_eq!(
            parse("ssh://deploy@web1.example:2222/run/docker.sock").unwrap(),
            (
                "deploy@web1.example".into(),
                Some(2222),
                "/run/docker.sock".into()
            )
        );
        assert_eq!(
            parse("ssh://web1").unwrap(),
            ("web1".into(), None, "/var/run/docker.sock".into())
        );
        for bad in [
            "ssh://",
            "ssh://-oProxyCommand=x",
            "ssh://h:port",
            "ssh://h/",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
