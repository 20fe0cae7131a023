//! A repository in an S3-compatible bucket (AWS, Garage, MinIO, Ceph), through object_store.
//!
//! Only plain PUT, multipart upload, GET, HEAD, LIST and DELETE are used. In particular no
//! conditional writes: Garage ignores If-None-Match, so correctness must never depend on them.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart};

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
            .finish()
    }
}

pub struct S3Store {
    client: AmazonS3,
    bucket: String,
    prefix: String,
    rt: Arc<tokio::runtime::Runtime>,
}

impl S3Store {
    pub fn new(bucket: &str, prefix: &str, opts: &S3Options) -> Result<Self> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(opts.region.as_deref().unwrap_or("us-east-1"))
            // Path-style requests work with every S3-compatible server; Garage needs them.
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300)),
            );
        if let Some(endpoint) = &opts.endpoint {
            b = b.with_endpoint(endpoint);
            let http = endpoint.starts_with("http://");
            b = b.with_allow_http(opts.allow_http.unwrap_or(http));
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("freezer-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client runtime", e))?;
        Ok(S3Store {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            rt: Arc::new(rt),
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

    fn err(&self, what: &str, key: &str, e: object_store::Error) -> Error {
        map_error(what, &self.url(key), e)
    }
}

fn map_error(what: &str, url: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Error::not_found(format!("object {url} not found")),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            Error::new(ErrorKind::Unreachable, format!("{what} {url}: access denied"))
                .with_source(e)
                .with_hint("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's permissions on the bucket")
        }
        other => Error::new(ErrorKind::Unreachable, format!("{what} {url} failed"))
            .with_source(other)
            .with_hint("check that the S3 endpoint (AWS_ENDPOINT_URL) is reachable and the credentials are right"),
    }
}

impl Store for S3Store {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        self.rt.block_on(async {
            let r = self
                .client
                .get(&path)
                .await
                .map_err(|e| self.err("reading", key, e))?;
            let bytes = r.bytes().await.map_err(|e| self.err("reading", key, e))?;
            Ok(bytes.to_vec())
        })
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let path = self.path(key)?;
        let r = self
            .rt
            .block_on(self.client.get(&path))
            .map_err(|e| self.err("reading", key, e))?;
        Ok(Box::new(StreamReader {
            rt: self.rt.clone(),
            stream: r.into_stream(),
            chunk: Bytes::new(),
            url: self.url(key),
        }))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match self.rt.block_on(self.client.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("checking", key, e)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        self.rt
            .block_on(self.client.put(&path, payload))
            .map_err(|e| self.err("writing", key, e))?;
        Ok(())
    }

    fn put_file(&self, key: &str, file: &Path) -> Result<()> {
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
                .rt
                .block_on(self.client.put_multipart(&path))
                .map_err(|e| self.err("starting upload of", key, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            let result: Result<()> = (|| loop {
                let n =
                    read_full(&mut f, &mut buf).ctx(|| format!("reading {}", file.display()))?;
                if n == 0 {
                    return Ok(());
                }
                self.rt
                    .block_on(w.wait_for_capacity(PARTS_IN_FLIGHT))
                    .map_err(|e| self.err("uploading", key, e))?;
                w.write(&buf[..n]);
                fault_point_in_multipart(&self.rt, &mut w);
            })();
            match result {
                Ok(()) => {
                    self.rt
                        .block_on(w.finish())
                        .map_err(|e| self.err("finishing upload of", key, e))?;
                }
                Err(e) => {
                    // Best effort: an abandoned upload only costs space until the bucket's
                    // lifecycle rule (or prune) removes it.
                    let _ = self.rt.block_on(w.abort());
                    return Err(e);
                }
            }
        }
        let _ = std::fs::remove_file(file);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full = format!("{base}{}", prefix.trim_end_matches('/'));
        let list_path = ObjPath::from(full.as_str());
        let mut out = self.rt.block_on(async {
            let mut stream = self.client.list(Some(&list_path));
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                let meta = item.map_err(|e| self.err("listing", prefix, e))?;
                if let Some(key) = meta.location.as_ref().strip_prefix(&base) {
                    out.push(ObjectInfo {
                        key: key.to_string(),
                        size: meta.size,
                        modified: Some(meta.last_modified.into()),
                    });
                }
            }
            Ok::<_, Error>(out)
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.rt.block_on(self.client.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("deleting", key, e)),
        }
    }

    fn spool_dir(&self) -> Result<PathBuf> {
        Ok(std::env::temp_dir())
    }
}

/// Test hook: `FREEZER_FAULT_ABORT_IN_MULTIPART=1` kills the process once the first part
/// of a multipart upload has reached the server, leaving the upload incomplete, as a
/// `kill -9` in the middle of a large upload would. Used by the interrupted-freeze test.
fn fault_point_in_multipart(rt: &tokio::runtime::Runtime, w: &mut WriteMultipart) {
    if std::env::var_os("FREEZER_FAULT_ABORT_IN_MULTIPART").is_some() {
        let _ = rt.block_on(w.wait_for_capacity(0));
        eprintln!("freezer: fault injection: aborting in the middle of a multipart upload");
        std::process::abort();
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
struct StreamReader {
    rt: Arc<tokio::runtime::Runtime>,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    url: String,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(into_io(map_error("reading", &self.url, e))),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}
