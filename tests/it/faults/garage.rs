//! Garage servers that a test owns: started from nothing in a temporary directory, so that
//! the test can kill, stop and restart them without disturbing the shared one every other
//! test uses. One node, or a cluster of three with every object on each (replication 3).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{services, unique};

pub struct Garage {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
}

struct Node {
    config: PathBuf,
    s3_port: u16,
    child: Option<Child>,
}

fn binary() -> String {
    services();
    std::env::var("FREEZER_TEST_GARAGE").expect("FREEZER_TEST_GARAGE is set by scripts/services")
}

/// A port nothing listens on right now (the kernel's choice; the server binds it a moment
/// later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `garage -c CONFIG ARGS` until it succeeds (first-start steps race the server's
/// own start-up) and returns its stdout.
fn garage(config: &Path, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(binary())
            .arg("-c")
            .arg(config)
            .args(args)
            .output()
            .expect("running garage");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if Instant::now() > deadline {
            panic!(
                "garage {args:?} kept failing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Garage {
    /// `n` nodes (1, or 3 for a cluster with replication 3), a key and a bucket.
    pub fn start(n: usize) -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let root = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(root.join("meta")).unwrap();
            std::fs::create_dir_all(root.join("data")).unwrap();
            let (rpc, s3) = (free_port(), free_port());
            let config = root.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = {n}\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    root = root.display()
                ),
            )
            .unwrap();
            nodes.push(Node {
                config,
                s3_port: s3,
                child: None,
            });
        }
        let mut g = Garage {
            dir,
            nodes,
            key_id: String::new(),
            secret: String::new(),
            bucket: unique("faults"),
        };
        for i in 0..n {
            g.spawn(i);
        }
        let first = g.nodes[0].config.clone();
        let ids: Vec<String> = g
            .nodes
            .iter()
            .map(|node| {
                garage(&node.config, &["node", "id", "-q"])
                    .trim()
                    .to_string()
            })
            .collect();
        for id in &ids[1..] {
            garage(&first, &["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            garage(
                &first,
                &["layout", "assign", "-z", "dc1", "-c", "1G", short],
            );
        }
        garage(&first, &["layout", "apply", "--version", "1"]);
        garage(&first, &["key", "create", "faults"]);
        garage(&first, &["bucket", "create", &g.bucket]);
        garage(
            &first,
            &[
                "bucket", "allow", "--read", "--write", "--owner", &g.bucket, "--key", "faults",
            ],
        );
        let info = garage(&first, &["key", "info", "--show-secret", "faults"]);
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim_start_matches(':').trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in garage key info:\n{info}"))
        };
        g.key_id = field("Key ID");
        g.secret = field("Secret key");
        g.wait_ready(0);
        g
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(node.config.with_file_name("garage.log")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting garage");
        node.child = Some(child);
    }

    /// Waits until node `i` answers S3 requests again.
    pub fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].s3_port)).is_err() {
            assert!(Instant::now() < deadline, "garage node {i} did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The S3 endpoint of node `i` (host:port).
    pub fn s3_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// Environment for freezer to use this server through `endpoint` (host:port: node 0,
    /// or a proxy in front of it).
    pub fn env(&self, endpoint: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), format!("http://{endpoint}")),
            ("AWS_REGION".into(), "garage".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }

    pub fn repo_url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed node again, on the same data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn(i);
        self.wait_ready(i);
    }

    /// SIGSTOP: the node keeps its sockets (connections are accepted by the kernel) and
    /// answers nothing, as a hung server does.
    pub fn pause(&self, i: usize) {
        self.signal(i, "STOP");
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, "CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i].child.as_ref().expect("node runs").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // SIGKILL ends stopped processes too.
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
