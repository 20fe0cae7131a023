//! A watchdog for the pause window. While a hydrated freeze holds a site paused (or
//! stopped), a site that stays paused is a site that is down. SIGINT and SIGTERM are
//! handled in-process ([`crate::interrupt`]), but SIGKILL, the OOM killer or a crash
//! leave no chance to clean up; so before the first container is paused, freezer starts a
//! second process of its own (`freezer guard`, hidden) and tells it over a pipe what it
//! holds. If the pipe closes without "done", the freeze died: the guard resumes every
//! container it was told about that is still held, says so on stderr, and exits.
//!
//! The guard ignores SIGINT, SIGTERM and SIGHUP and starts its own session, so a Ctrl-C
//! or a signal to the process group reaches only the freeze, which then releases the
//! site itself and closes the pipe with "done".

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{Endpoint, Engine};
use crate::error::{Error, Result};

/// One line on the pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// First: the engine, and the freeze's pid (for the message).
    Engine {
        host: String,
        tls: Option<std::path::PathBuf>,
        pid: u32,
    },
    /// A container paused (`stopped: false`) or stopped for the copy.
    Held {
        id: String,
        name: String,
        stopped: bool,
    },
    /// Everything held was released: nothing for the guard to do.
    Done,
}

/// The freeze's end of the watchdog.
pub struct Guard {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Guard {
    pub fn start(endpoint: &Endpoint) -> Result<Guard> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("finding freezer's own executable", e))?;
        let mut child = Command::new(&exe)
            .arg("guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::io(
                    format!("starting the pause watchdog ({})", exe.display()),
                    e,
                )
            })?;
        let pipe = child.stdin.take();
        let mut guard = Guard { child, pipe };
        guard.send(&Message::Engine {
            host: endpoint.host.clone(),
            tls: endpoint.tls.clone(),
            pid: std::process::id(),
        })?;
        Ok(guard)
    }

    /// Tells the guard about a container just paused or stopped. Sent before the next
    /// one is held: the guard never knows less than what is held.
    pub fn held(&mut self, id: &str, name: &str, stopped: bool) -> Result<()> {
        self.send(&Message::Held {
            id: id.into(),
            name: name.into(),
            stopped,
        })
    }

    fn send(&mut self, m: &Message) -> Result<()> {
        let pipe = self.pipe.as_mut().expect("open until done");
        let mut line = serde_json::to_vec(m).expect("serializable");
        line.push(b'\n');
        pipe.write_all(&line)
            .and_then(|_| pipe.flush())
            .map_err(|e| Error::io("telling the pause watchdog", e))
    }

    /// Everything was released: the guard exits without acting.
    pub fn done(mut self) {
        let _ = self.send(&Message::Done);
        self.pipe = None;
        let _ = self.child.wait();
    }
}

/// `freezer guard`: reads the pipe until it closes, then resumes what is still held
/// unless it was told "done". Returns the exit code.
pub fn run() -> i32 {
    crate::sys::detach_from_terminal_signals();
    let stdin = std::io::stdin();
    let mut engine: Option<(Endpoint, u32)> = None;
    let mut held: Vec<(String, String, bool)> = Vec::new();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Message>(&line) {
            Ok(Message::Engine { host, tls, pid }) => engine = Some((Endpoint { host, tls }, pid)),
            Ok(Message::Held { id, name, stopped }) => held.push((id, name, stopped)),
            Ok(Message::Done) => return 0,
            Err(_) => {}
        }
    }
    let Some((endpoint, pid)) = engine else {
        return 0;
    };
    if held.is_empty() {
        return 0;
    }
    let engine = match Engine::connect_to(&endpoint) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("freezer guard: the freeze (pid {pid}) ended while it held the site, and the engine cannot be reached: {e}");
            say_by_hand(&held);
            return 1;
        }
    };
    let (mut resumed, mut failed) = (Vec::new(), Vec::new());
    for (id, name, stopped) in held.iter().rev() {
        match super::journal::resume(&engine, id, *stopped) {
            Ok(true) => {
                resumed.push(name.as_str());
                super::journal::clear(id);
            }
            Ok(false) => super::journal::clear(id),
            Err(e) => {
                eprintln!("freezer guard: resuming {name}: {e}");
                failed.push((id.clone(), name.clone(), *stopped));
            }
        }
    }
    if !resumed.is_empty() {
        eprintln!(
            "freezer guard: the freeze (pid {pid}) ended while it held the site; resumed {}",
            resumed.join(", ")
        );
    }
    if failed.is_empty() {
        0
    } else {
        say_by_hand(&failed);
        1
    }
}

fn say_by_hand(held: &[(String, String, bool)]) {
    eprintln!("freezer guard: resume these containers by hand:");
    for (_, name, stopped) in held {
        let how = if *stopped {
            "docker start"
        } else {
            "docker unpause"
        };
        eprintln!("freezer guard:   {how} {name}");
    }
}
