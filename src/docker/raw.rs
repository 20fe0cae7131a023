//! Plain HTTP reads of an engine's answers, for the few calls whose typed answer an engine
//! can break.
//!
//! Podman's Docker-compatible API answers with libpod's own container states (`stopped`
//! between a container's exit and its cleanup, `stopping`, `configured`, `initialized`)
//! where Docker's schema has none of them. bollard's enums refuse those, and one container
//! caught mid-stop fails the whole listing (bollard issues 293 and 701). So container
//! listings and inspections are read here as JSON, their states put in Docker's words, and
//! only then typed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// How long a plain read may wait for the engine, as long as bollard's client waits.
const TIMEOUT: Duration = Duration::from_secs(300);

/// How a plain request reaches the engine: its socket (local, or an SSH tunnel's) or its
/// plain TCP address. An engine behind TLS has no route and is read through bollard.
#[derive(Debug, Clone)]
pub enum Route {
    Unix(PathBuf),
    Tcp(String),
}

/// `GET path` with HTTP/1.0, so the engine closes the connection after its answer (no
/// chunked bodies to decode): the status and the body.
pub fn get(route: &Route, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n");
    // As long as bollard's client waits: a stuck engine must not hang a nightly run.
    let buf = match route {
        Route::Unix(socket) => {
            let s = std::os::unix::net::UnixStream::connect(socket)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            exchange(s, &request)?
        }
        Route::Tcp(addr) => {
            let s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            exchange(s, &request)?
        }
    };
    let bad = |what: &str| std::io::Error::other(format!("its answer to GET {path} {what}"));
    let end = memchr::memmem::find(&buf, b"\r\n\r\n").ok_or_else(|| bad("has no HTTP header"))?;
    let status = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("has no HTTP status"))?;
    Ok((status, buf[end + 4..].to_vec()))
}

fn exchange<S: Read + Write>(mut s: S, request: &str) -> std::io::Result<Vec<u8>> {
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(buf)
}

/// A name or id as one segment of a request path: percent-encoded beyond `[A-Za-z0-9_.-]`.
pub fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A container state in Docker's words: libpod's own states become the Docker state that
/// means the same to a caller (`stopped` has exited; `stopping` still runs until it has;
/// `configured` and `initialized` were created and never started). Anything else unknown
/// is left empty, which no caller takes for running.
pub fn docker_state(state: &str) -> &str {
    match state {
        "" | "created" | "running" | "paused" | "restarting" | "removing" | "exited" | "dead" => {
            state
        }
        "stopped" => "exited",
        "stopping" => "running",
        "configured" | "initialized" => "created",
        _ => "",
    }
}

/// A container listing (`GET /containers/json`) with every `State` in Docker's words.
pub fn normalize_listing(mut listing: Value) -> Value {
    for c in listing.as_array_mut().into_iter().flatten() {
        normalize_at(c, "State");
    }
    listing
}

/// A container's inspection (`GET /containers/ID/json`) with `State.Status` in Docker's
/// words.
pub fn normalize_inspection(mut inspection: Value) -> Value {
    if let Some(state) = inspection.get_mut("State") {
        normalize_at(state, "Status");
    }
    inspection
}

fn normalize_at(object: &mut Value, key: &str) {
    if let Some(Value::String(s)) = object.get_mut(key) {
        let docker = docker_state(s);
        if docker != s {
            *s = docker.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
        ContainerSummaryStateEnum,
    };

    /// Podman 4's answers, trimmed, as they come while a container stops.
    #[test]
    fn podman_states_are_read_as_docker_states() {
        let listing: Value = serde_json::from_str(
            r#"[{"Id":"a1","Names":["/shop-web-1"],"Image":"web","State":"stopped"},
                {"Id":"b2","Names":["/shop-db-1"],"Image":"db","State":"stopping"},
                {"Id":"c3","Names":["/shop-job-1"],"Image":"job","State":"configured"},
                {"Id":"d4","Names":["/shop-cron-1"],"Image":"cron","State":"running"},
                {"Id":"e5","Names":["/shop-odd-1"],"Image":"odd","State":"frobbing"}]"#,
        )
        .unwrap();
        assert!(serde_json::from_value::<Vec<ContainerSummary>>(listing.clone()).is_err());
        let typed: Vec<ContainerSummary> =
            serde_json::from_value(normalize_listing(listing)).unwrap();
        let states: Vec<_> = typed.iter().map(|c| c.state).collect();
        use ContainerSummaryStateEnum as S;
        assert_eq!(
            states,
            [
                Some(S::EXITED),
                Some(S::RUNNING),
                Some(S::CREATED),
                Some(S::RUNNING),
                Some(S::EMPTY)
            ]
        );

        let inspection: Value = serde_json::from_str(
            r#"{"Id":"a1","Name":"/shop-web-1","State":{"Status":"stopped","Running":false,"ExitCode":0}}"#,
        )
        .unwrap();
        assert!(serde_json::from_value::<ContainerInspectResponse>(inspection.clone()).is_err());
        let typed: ContainerInspectResponse =
            serde_json::from_value(normalize_inspection(inspection)).unwrap();
        let state = typed.state.unwrap();
        assert_eq!(state.status, Some(ContainerStateStatusEnum::EXITED));
        assert_eq!(state.running, Some(false));
    }
}
