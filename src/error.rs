//! One error type for the whole library.
//!
//! Every error carries a kind (which decides the process exit code, see
//! [`ErrorKind::exit_code`]), a message that names the path or object that
//! failed, and optionally a hint that tells the user what to do next.

use std::fmt;

/// What class of failure happened. The exit code of the binary is derived from it,
/// so cron jobs and CI can tell "the backup is damaged" from "the server was down".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad command line, config file or argument value.
    Usage,
    /// A store or service could not be reached, or refused our credentials.
    Unreachable,
    /// A repository, snapshot or object that was asked for does not exist.
    NotFound,
    /// Stored data failed verification: a digest mismatch, a malformed or hostile object.
    Integrity,
    /// The operation would destroy or overwrite something (non-empty target, existing repository).
    Conflict,
    /// Another run holds the lock this one needs (a freeze of the same site, a prune).
    Locked,
    /// Part of the work is done and part is not (a thaw that restored some destinations
    /// and then failed); the message says which.
    Partial,
    /// Anything else: local I/O failure, disk full, internal error.
    Other,
    /// A signal (SIGINT, SIGTERM) asked the run to stop, and it stopped cleanly.
    Interrupted,
}

impl ErrorKind {
    /// Its name in `--json` errors and run records: `usage`, `unreachable`, …
    pub fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }

    /// Documented exit codes (README "Exit codes").
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Unreachable => 3,
            ErrorKind::Integrity => 4,
            ErrorKind::Locked => 5,
            ErrorKind::NotFound => 6,
            ErrorKind::Conflict => 7,
            ErrorKind::Partial => 8,
            // 128 + SIGINT, as shells report a run ended by Ctrl-C.
            ErrorKind::Interrupted => 130,
        }
    }
}

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }
    /// The run was asked to stop (a signal); `what` names the step it stopped at.
    pub fn interrupted(what: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Interrupted,
            format!("interrupted while {}", what.into()),
        )
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// An I/O error on a local path. Disk full gets its own hint because it is the
    /// one local failure a user can fix right away.
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        let hint = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                Some("the disk is full: free space on it and run again")
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                Some("permission denied: run as a user that may read and write these paths")
            }
            _ => None,
        };
        let mut e = Error::new(ErrorKind::Other, format!("{what}: {err}"));
        e.hint = hint.map(str::to_string);
        e
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The whole chain of causes: clients' top-level messages ("client error
        // (Connect)") often hide the reason (a refused connection, an untrusted
        // certificate). A cause already part of the text is not repeated.
        let mut text = self.message.clone();
        let mut cause = self
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(c) = cause {
            let t = c.to_string();
            if !text.contains(&t) {
                text = format!("{text}: {t}");
            }
            cause = c.source();
        }
        f.write_str(&text)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Adds "what we were doing" to I/O results, so no error reaches the user without a path.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| {
            // An I/O error may wrap one of ours (readers that verify digests do this).
            if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
                let inner = e.into_inner().unwrap().downcast::<Error>().unwrap();
                return *inner;
            }
            Error::io(what(), e)
        })
    }
}

/// Wraps our error into an io::Error so it can travel through `Read`/`Write` and be
/// recovered intact by [`IoContext::ctx`].
pub fn into_io(err: Error) -> std::io::Error {
    std::io::Error::other(err)
}

/// Puts `what` in front of an error's message, once: the context a caller adds (which
/// snapshot, which tree) to an error from below.
pub fn prefix(mut e: Error, what: &str) -> Error {
    if !e.message.contains(what) {
        e.message = format!("{what}: {}", e.message);
    }
    e
}

/// A URL as typed, with any password replaced (`scheme://user:***@host/…`), for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
