//! A repository in an S3-compatible bucket (AWS, Garage, MinIO, Ceph), through object_store.
//!
//! Only plain PUT, multipart upload, GET, HEAD, LIST and DELETE are used. In particular no
//! conditional writes: Garage ignores If-None-Match, so correctness must never depend on them.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart};

use std::sync::Arc;

use super::retry::{bounded, deepest_cause, Connector, GaveUp, Health, RetryPolicy};
use super::{check_key, ObjectInfo, Store};
use crate::error::{into_io, Error, ErrorKind, IoContext, Result};

/// Parts of a multipart upload. 8 MiB keeps memory small (4 parts in flight) and stays
/// above S3's 5 MiB minimum part size.
const PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// Connection settings, merged from the config file and the standard `AWS_*` variables.
#[derive(Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub allow_http: Option<bool>,
    /// How long failing requests are retried, and when one counts as stalled.
    pub retry: RetryPolicy,
}

// Secrets are never printed, not even in debug output.
impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("retry", &self.retry)
            .finish()
    }
}

pub struct S3Store {
    client: AmazonS3,
    bucket: String,
    prefix: String,
    rt: &'static tokio::runtime::Runtime,
    retry: RetryPolicy,
    /// Since when the store has failed every attempt: bounds the run, not each request.
    health: Arc<Health>,
    /// Whether the spool directory was swept of dead runs' files yet (once per process).
    swept: std::sync::atomic::AtomicBool,
}

impl S3Store {
    pub fn new(bucket: &str, prefix: &str, opts: &S3Options) -> Result<Self> {
        // Without keys, object_store would ask the EC2 instance metadata service, which
        // off EC2 answers with a timeout or a 403 from 169.254.169.254 that names none
        // of what is missing. Roles through a web identity or a container endpoint
        // (EKS, ECS) are still taken from their variables.
        let role = [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        if (opts.access_key_id.is_none() || opts.secret_access_key.is_none()) && !role {
            return Err(Error::usage(format!("no S3 credentials for bucket {bucket}"))
                .with_hint("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id and secret_access_key in the [s3] table of freezer.toml"));
        }
        let http = opts
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let allow_http = opts.allow_http.unwrap_or(http);
        let health = Arc::new(Health::default());
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(opts.region.as_deref().unwrap_or("us-east-1"))
            // Path-style requests work with every S3-compatible server; Garage needs them.
            .with_virtual_hosted_style_request(false)
            .with_retry(opts.retry.object_store_config())
            .with_http_connector(Connector {
                policy: opts.retry,
                allow_http,
                health: health.clone(),
            })
            .with_allow_http(allow_http);
        if let Some(endpoint) = &opts.endpoint {
            b = b.with_endpoint(endpoint);
        }
        if let Some(v) = &opts.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &opts.secret_access_key {
            b = b.with_secret_access_key(v);
        }
        if let Some(v) = &opts.session_token {
            b = b.with_token(v);
        }
        let client = b.build().map_err(|e| {
            Error::usage(format!("cannot configure S3 bucket {bucket}: {e}"))
                .with_hint("set AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the [s3] table of freezer.toml")
        })?;
        let rt = crate::sys::runtime()?;
        Ok(S3Store {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            rt,
            retry: opts.retry,
            health,
            swept: Default::default(),
        })
    }

    fn path(&self, key: &str) -> Result<ObjPath> {
        check_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjPath::parse(&full)
            .map_err(|e| Error::integrity(format!("invalid object key {key:?}: {e}")))
    }

    fn url(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}/{key}", self.bucket)
        } else {
            format!("s3://{}/{}/{key}", self.bucket, self.prefix)
        }
    }

    /// `started`: when the operation began, to tell a store that stayed down from one
    /// that refused at once.
    fn err(&self, what: &str, key: &str, e: object_store::Error, started: Instant) -> Error {
        map_error(
            what,
            &self.url(key),
            &self.bucket,
            &self.health,
            self.retry,
            started,
            e,
        )
    }

    /// Runs one store operation on the runtime, within the run's bound ([`bounded`]).
    fn run<T>(
        &self,
        op: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        self.rt.block_on(bounded(&self.health, &self.retry, op))
    }
}

/// The cause under a store error, as words (object_store's retry wrapper would print
/// its counters: "max_retries: 18446744073709551615").
#[derive(Debug)]
struct Cause(String);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cause {}

fn map_error(
    what: &str,
    url: &str,
    bucket: &str,
    health: &Health,
    retry: RetryPolicy,
    started: Instant,
    e: object_store::Error,
) -> Error {
    use object_store::Error as E;
    match e {
        // S3 answers 404 for a missing bucket too; its error code tells them apart.
        E::NotFound { .. } if format!("{e:?}").contains("NoSuchBucket") => {
            Error::new(ErrorKind::NotFound, format!("{what} {url}: bucket {bucket} does not exist"))
                .with_hint("create the bucket first (aws s3 mb, garage bucket create, mc mb), or fix the repository URL")
        }
        E::NotFound { .. } => Error::not_found(format!("object {url} not found")),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            Error::new(ErrorKind::Unreachable, format!("{what} {url}: access denied"))
                .with_source(e)
                .with_hint("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's permissions on the bucket")
        }
        other
            if is_gave_up(&other)
                || health.given_up(&retry)
                || started.elapsed() >= retry.retry_for =>
        {
            let cause = health
                .last_cause()
                .unwrap_or_else(|| deepest_cause(&other));
            Error::new(
                ErrorKind::Unreachable,
                format!(
                    "{what} {url} failed: the store did not recover while freezer retried for {}s",
                    retry.retry_for.as_secs()
                ),
            )
            .with_source(Cause(cause))
            .with_hint("check that the S3 endpoint (AWS_ENDPOINT_URL) is up and reachable; to wait longer, raise --retry-for, FREEZER_RETRY_FOR or retry_for in [s3] of freezer.toml")
        }
        other => Error::new(ErrorKind::Unreachable, format!("{what} {url} failed"))
            .with_source(Cause(deepest_cause(&other)))
            .with_hint("check that the S3 endpoint (AWS_ENDPOINT_URL) is reachable and the credentials are right"),
    }
}

fn is_gave_up(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { source, .. } if source.is::<GaveUp>())
}

impl Store for S3Store {
    fn failing(&self) -> bool {
        self.health.down_for().is_some()
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let t = Instant::now();
        let path = self.path(key)?;
        let bytes = self
            .run(async { self.client.get(&path).await?.bytes().await })
            .map_err(|e| self.err("reading", key, e, t))?;
        Ok(bytes.to_vec())
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let t = Instant::now();
        let path = self.path(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = self
            .run(self.client.get_range(&path, start..start + len))
            .map_err(|e| self.err("reading", key, e, t))?;
        Ok(bytes.to_vec())
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let t = Instant::now();
        let path = self.path(key)?;
        let r = self
            .run(self.client.get(&path))
            .map_err(|e| self.err("reading", key, e, t))?;
        Ok(Box::new(StreamReader {
            rt: self.rt,
            client: self.client.clone(),
            path,
            e_tag: r.meta.e_tag.clone(),
            stream: r.into_stream(),
            chunk: Bytes::new(),
            offset: 0,
            url: self.url(key),
            bucket: self.bucket.clone(),
            retry: self.retry,
            health: self.health.clone(),
        }))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let t = Instant::now();
        let path = self.path(key)?;
        match self.run(self.client.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("checking", key, e, t)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let t = Instant::now();
        let path = self.path(key)?;
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        self.run(self.client.put(&path, payload))
            .map_err(|e| self.err("writing", key, e, t))?;
        Ok(())
    }

    fn put_file(&self, key: &str, file: &Path) -> Result<()> {
        let t = Instant::now();
        let path = self.path(key)?;
        let mut f = File::open(file).ctx(|| format!("opening {}", file.display()))?;
        let len = f
            .metadata()
            .ctx(|| format!("reading {}", file.display()))?
            .len();
        if len <= PART_SIZE as u64 {
            let mut data = Vec::with_capacity(len as usize);
            f.read_to_end(&mut data)
                .ctx(|| format!("reading {}", file.display()))?;
            self.put(key, &data)?;
        } else {
            let _guard = self.rt.enter();
            let upload = self
                .run(self.client.put_multipart(&path))
                .map_err(|e| self.err("starting upload of", key, e, t))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            let result: Result<()> = (|| loop {
                let n =
                    read_full(&mut f, &mut buf).ctx(|| format!("reading {}", file.display()))?;
                if n == 0 {
                    return Ok(());
                }
                self.run(w.wait_for_capacity(PARTS_IN_FLIGHT))
                    .map_err(|e| self.err("uploading", key, e, t))?;
                w.write(&buf[..n]);
                fault_point_in_multipart(self.rt, &mut w);
            })();
            match result {
                Ok(()) => {
                    self.run(w.finish())
                        .map_err(|e| self.err("finishing upload of", key, e, t))?;
                }
                Err(e) => {
                    // Best effort: an abandoned upload only costs space until the bucket's
                    // lifecycle rule (or prune) removes it.
                    let _ = self.run(w.abort());
                    return Err(e);
                }
            }
        }
        let _ = std::fs::remove_file(file);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let t = Instant::now();
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full = format!("{base}{}", prefix.trim_end_matches('/'));
        let list_path = ObjPath::from(full.as_str());
        let mut out = self
            .run(async {
                let mut stream = self.client.list(Some(&list_path));
                let mut out = Vec::new();
                while let Some(item) = stream.next().await {
                    let meta = item?;
                    if let Some(key) = meta.location.as_ref().strip_prefix(&base) {
                        out.push(ObjectInfo {
                            key: key.to_string(),
                            size: meta.size,
                            modified: Some(meta.last_modified.into()),
                        });
                    }
                }
                Ok(out)
            })
            .map_err(|e| self.err("listing", prefix, e, t))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let t = Instant::now();
        let path = self.path(key)?;
        match self.run(self.client.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("deleting", key, e, t)),
        }
    }

    fn spool_dir(&self) -> Result<PathBuf> {
        let dir = std::env::temp_dir();
        if !self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            super::sweep_spool(&dir);
        }
        Ok(dir)
    }
}

/// Test hook ([`crate::fault::Abort::InMultipart`]): aborts once the first part of a
/// multipart upload has reached the server, leaving the upload incomplete, as a `kill -9`
/// in the middle of a large upload would.
fn fault_point_in_multipart(rt: &tokio::runtime::Runtime, w: &mut WriteMultipart) {
    if crate::fault::armed(crate::fault::Abort::InMultipart).is_some() {
        let _ = rt.block_on(w.wait_for_capacity(0));
        crate::fault::abort_at(crate::fault::Abort::InMultipart, 1);
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Adapts a GET response stream to `std::io::Read`, one network chunk at a time.
///
/// object_store resumes a broken body itself, but only within `retry_for` of the first
/// request, which a long download outlasts; so when the stream fails for good this reader
/// asks again for the rest (a ranged GET from the last byte received, of the same ETag),
/// for up to `retry_for` since the last byte arrived.
struct StreamReader {
    rt: &'static tokio::runtime::Runtime,
    client: AmazonS3,
    path: ObjPath,
    e_tag: Option<String>,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    /// Bytes received so far.
    offset: u64,
    url: String,
    bucket: String,
    retry: RetryPolicy,
    health: Arc<Health>,
}

impl StreamReader {
    fn error(&self, e: object_store::Error, since: Instant) -> std::io::Error {
        into_io(map_error(
            "reading",
            &self.url,
            &self.bucket,
            &self.health,
            self.retry,
            since,
            e,
        ))
    }

    /// Waits for the store and re-opens the object from `offset`.
    fn resume(&mut self, first: object_store::Error) -> std::io::Result<()> {
        let since = Instant::now();
        let mut wait = Duration::from_millis(200);
        let mut last = first;
        loop {
            let permanent = matches!(
                last,
                object_store::Error::NotFound { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            );
            if permanent
                || since.elapsed() >= self.retry.retry_for
                || self.health.given_up(&self.retry)
            {
                return Err(self.error(last, since));
            }
            // In steps: the run's bound may end while it waits.
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.health.given_up(&self.retry) {
                std::thread::sleep(Duration::from_millis(100));
            }
            wait = (wait * 2).min(Duration::from_secs(10));
            let opts = GetOptions {
                range: Some(GetRange::Offset(self.offset)),
                // The same object or nothing: a replaced one would splice two versions.
                if_match: self.e_tag.clone(),
                ..Default::default()
            };
            let reopen = bounded(
                &self.health,
                &self.retry,
                self.client.get_opts(&self.path, opts),
            );
            match self.rt.block_on(reopen) {
                Ok(r) => {
                    self.stream = r.into_stream();
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => self.resume(e)?,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        self.offset += n as u64;
        Ok(n)
    }
}
