//! A fault-injecting HTTP proxy between freezer and Garage, on loopback. No mock: every
//! request that is not faulted goes to the real server and back. Faults are what S3
//! endpoints and the networks in front of them do: answer 503 SlowDown, reset the
//! connection, stop answering, cut a response body short, crawl.
//!
//! Each client connection carries one request: the proxy reads its head and body,
//! forwards it to the server with `Connection: close`, and copies the answer back until
//! the server closes. That is enough HTTP to fault one request at a time.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 Slow Down` with S3's SlowDown error, without asking the server.
    SlowDown,
    /// Close the connection with a TCP reset once the request has arrived.
    Reset,
    /// Say nothing for this long, then close.
    Stall(Duration),
    /// Forward the request, then pass on the head and half of the body of an answer with
    /// a body of at least 1 KiB, and reset the connection. Smaller answers pass whole and
    /// leave the fault for a later request.
    CutBody,
}

struct Rule {
    fault: Fault,
    /// Only requests with this method ("GET", "PUT", …); None: any.
    method: Option<&'static str>,
    /// How many more matching requests to fault.
    remaining: usize,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    rules: Arc<Mutex<Vec<Rule>>>,
    /// Bytes per second in each direction, 0 for no limit.
    rate: Arc<AtomicUsize>,
    /// Requests received so far.
    seen: Arc<AtomicUsize>,
    /// Bytes passed so far, both directions (requests and answers, heads included).
    bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = FaultProxy {
            addr,
            rules: Arc::default(),
            rate: Arc::default(),
            seen: Arc::default(),
            bytes: Arc::default(),
            stop: Arc::default(),
        };
        let (rules, rate, seen, bytes, stop) = (
            proxy.rules.clone(),
            proxy.rate.clone(),
            proxy.seen.clone(),
            proxy.bytes.clone(),
            proxy.stop.clone(),
        );
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let (rules, rate, seen, bytes, upstream) = (
                    rules.clone(),
                    rate.clone(),
                    seen.clone(),
                    bytes.clone(),
                    upstream.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &rules, &rate, &seen, &bytes);
                });
            }
        });
        proxy
    }

    /// Faults the next `count` requests (with `method`, if given).
    pub fn inject(&self, fault: Fault, method: Option<&'static str>, count: usize) {
        self.rules.lock().unwrap().push(Rule {
            fault,
            method,
            remaining: count,
        });
    }

    /// Drops every fault still waiting: requests pass again.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Limits the bytes per second passed in each direction (0: no limit).
    pub fn throttle(&self, bytes_per_sec: usize) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Faults still waiting for a request.
    pub fn pending(&self) -> usize {
        self.rules.lock().unwrap().iter().map(|r| r.remaining).sum()
    }

    /// Bytes passed so far in both directions.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have come through (the run is under way).
    pub fn wait_for_requests(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.seen.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} requests came"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request: head (up to the blank line) and a Content-Length body.
fn read_request(client: &mut TcpStream) -> std::io::Result<(Vec<u8>, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = client.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    }
    // One request per connection: the server closes after answering.
    let mut lines: Vec<&str> = head[..head_end - 4].split("\r\n").collect();
    lines.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
    let mut request = lines.join("\r\n").into_bytes();
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    request.extend_from_slice(&buf[head_end..]);
    let method = head.split(' ').next().unwrap_or("").to_string();
    Ok((request, method))
}

fn take_fault(rules: &Mutex<Vec<Rule>>, method: &str) -> Option<Fault> {
    let mut rules = rules.lock().unwrap();
    let rule = rules
        .iter_mut()
        .find(|r| r.remaining > 0 && r.method.is_none_or(|m| m == method))?;
    rule.remaining -= 1;
    Some(rule.fault)
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    rules: &Mutex<Vec<Rule>>,
    rate: &AtomicUsize,
    seen: &AtomicUsize,
    bytes: &AtomicUsize,
) -> std::io::Result<()> {
    let (request, method) = read_request(&mut client)?;
    seen.fetch_add(1, Ordering::SeqCst);
    bytes.fetch_add(request.len(), Ordering::SeqCst);
    let fault = take_fault(rules, &method);
    let mut limit = usize::MAX;
    match fault {
        Some(Fault::SlowDown) => {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            write!(
                client,
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        Some(Fault::Reset) => {
            // SO_LINGER 0: close sends RST instead of FIN.
            socket_linger_zero(&client);
            return Ok(());
        }
        Some(Fault::Stall(d)) => {
            std::thread::sleep(d);
            return Ok(());
        }
        Some(Fault::CutBody) | None => {}
    }
    let mut server = TcpStream::connect(upstream)?;
    pace(&mut server, &request, rate)?;
    let mut buf = vec![0u8; 16384];
    let mut answer = Vec::new();
    // The head first, to learn the body's length.
    let head_end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = server.read(&mut buf)?;
        if n == 0 {
            break answer.len();
        }
        answer.extend_from_slice(&buf[..n]);
    };
    if fault == Some(Fault::CutBody) {
        let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
            .unwrap_or(0);
        if len >= 1024 {
            limit = head_end + len / 2;
        } else {
            // Not this one: give the fault back.
            put_back(rules, &method);
        }
    }
    let mut passed = 0usize;
    let mut pending = answer;
    loop {
        let n = pending.len().min(limit - passed);
        pace(&mut client, &pending[..n], rate)?;
        bytes.fetch_add(n, Ordering::SeqCst);
        passed += n;
        if passed >= limit {
            socket_linger_zero(&client);
            return Ok(());
        }
        let n = server.read(&mut buf)?;
        if n == 0 {
            break;
        }
        pending = buf[..n].to_vec();
    }
    client.shutdown(Shutdown::Write)
}

fn put_back(rules: &Mutex<Vec<Rule>>, method: &str) {
    let mut rules = rules.lock().unwrap();
    if let Some(r) = rules
        .iter_mut()
        .find(|r| r.fault == Fault::CutBody && r.method.is_none_or(|m| m == method))
    {
        r.remaining += 1;
    }
}

/// Writes `data`, no faster than `rate` bytes per second when a rate is set.
fn pace(to: &mut TcpStream, data: &[u8], rate: &AtomicUsize) -> std::io::Result<()> {
    let r = rate.load(Ordering::SeqCst);
    if r == 0 {
        return to.write_all(data);
    }
    // Slices of at most a twentieth of a second each, each followed by its share of time.
    for chunk in data.chunks((r / 20).max(1)) {
        to.write_all(chunk)?;
        std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / r as f64));
    }
    Ok(())
}

#[allow(unsafe_code)]
fn socket_linger_zero(s: &TcpStream) {
    // std has no stable SO_LINGER setter; libc is a dependency of the crate already.
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
