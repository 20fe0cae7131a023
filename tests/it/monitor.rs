//! Unattended runs report out: healthchecks-style pings and a Prometheus textfile.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use crate::common::*;

/// `(method, path, body)` of each request received.
type Requests = Arc<Mutex<Vec<(String, String, String)>>>;

/// A tiny HTTP server that records the requests it gets.
fn recorder() -> (String, Requests) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ping-token", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            log.lock()
                .unwrap()
                .push((method, path, String::from_utf8_lossy(&body).into_owned()));
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

#[test]
fn pings_say_start_success_and_failure() {
    let (url, seen) = recorder();
    let repo = TestRepo::local().init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    assert_ok(&freezer(&[
        "freeze",
        "s",
        "--repo",
        &repo.url,
        "--path",
        dir.path().to_str().unwrap(),
        "--ping",
        &url,
    ]));
    let out = freezer(&[
        "freeze",
        "s",
        "--repo",
        &repo.url,
        "--path",
        "/nonexistent/dir",
        "--ping",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/ping-token/start"),
            ("POST", "/ping-token"),
            ("POST", "/ping-token/start"),
            ("POST", "/ping-token/fail"),
        ]
    );
    assert!(
        seen[3].2.contains("/nonexistent/dir"),
        "the failure ping carries the error: {:?}",
        seen[3]
    );
    // An unreachable ping URL is a warning, never a failed backup.
    let out = freezer(&[
        "freeze",
        "s",
        "--repo",
        &repo.url,
        "--path",
        dir.path().to_str().unwrap(),
        "--ping",
        "http://127.0.0.1:1/x",
    ]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("ping http://127.0.0.1:1/… failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_metrics_textfile_tracks_each_site_and_keeps_the_last_success() {
    let repo = TestRepo::local().init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let metrics = dir.path().join("freezer.prom");
    let m = metrics.to_str().unwrap();
    let path = dir.path().to_str().unwrap();
    let sample = |name: &str, site: &str| -> Option<f64> {
        let text = std::fs::read_to_string(&metrics).unwrap();
        let key = format!("{name}{{command=\"freeze\",site=\"{site}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map(|v| v.parse().unwrap())
    };
    assert_ok(&freezer(&[
        "freeze",
        "a",
        "--repo",
        &repo.url,
        "--path",
        path,
        "--metrics-file",
        m,
    ]));
    assert_ok(&freezer(&[
        "freeze",
        "b",
        "--repo",
        &repo.url,
        "--path",
        path,
        "--metrics-file",
        m,
    ]));
    let success_a = sample("freezer_last_success_timestamp_seconds", "a").unwrap();
    assert_eq!(sample("freezer_last_exit_code", "a"), Some(0.0));
    assert!(sample("freezer_last_bytes_uploaded", "a").unwrap() > 0.0);
    assert!(sample("freezer_last_success_timestamp_seconds", "b").is_some());
    // A failed run records its exit code and keeps the time of the last success.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = freezer(&[
        "freeze",
        "a",
        "--repo",
        &repo.url,
        "--path",
        "/nonexistent",
        "--metrics-file",
        m,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(sample("freezer_last_exit_code", "a"), Some(2.0));
    assert_eq!(
        sample("freezer_last_success_timestamp_seconds", "a"),
        Some(success_a)
    );
    assert!(sample("freezer_last_run_timestamp_seconds", "a").unwrap() > success_a);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("# TYPE freezer_last_exit_code gauge"),
        "{text}"
    );
}

#[test]
fn json_output_is_progress_events_then_the_result() {
    let repo = TestRepo::local().init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let out = freezer(&[
        "freeze",
        "s",
        "--repo",
        &repo.url,
        "--path",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{text}");
    assert_eq!(lines[0]["event"], "progress", "{text}");
    assert!(lines[0]["done_bytes"].is_u64(), "{text}");
    let result = lines.last().unwrap();
    assert_eq!(result["site"], "s", "{text}");
    assert!(result["snapshot"].is_string(), "{text}");
    // Errors are JSON too, as the last line, with the exit code.
    let out = freezer(&["thaw", "nope", "--repo", &repo.url, "--json"]);
    assert_eq!(out.status.code(), Some(6));
    let err = result_line(&out.stdout);
    assert_eq!(err["error"]["exit_code"], 6);
}

/// A run ended by SIGTERM (a cron timeout, a shutdown) is still reported: a failure
/// ping and the metrics, with exit code 130.
#[test]
fn an_interrupted_run_still_pings_failure_and_writes_metrics() {
    let (url, seen) = recorder();
    // A store that accepts connections and never answers: the run waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let metrics = tempfile::tempdir().unwrap();
    let file = metrics.path().join("freezer.prom");
    let repo = format!("s3://{}/x", bucket());
    let child = spawn_freezer(
        &[
            "snapshots",
            "--repo",
            &repo,
            "--ping",
            &url,
            "--metrics-file",
            file.to_str().unwrap(),
        ],
        &[("AWS_ENDPOINT_URL", &endpoint)],
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|r| r.1.clone()).collect();
    assert_eq!(paths, ["/ping-token/start", "/ping-token/fail"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("freezer_last_exit_code{command=\"snapshots\",site=\"\"} 130"),
        "{text}"
    );
    drop(silent);
}
