//! A layer as a sequence of independent zstd frames (SPEC.md §5.1).
//!
//! A concatenation of zstd frames is one valid zstd stream, so a layer stays an ordinary
//! `tar+zstd` OCI layer that every tool reads whole. Cutting it into frames at entry
//! boundaries is what lets one file be read without the rest of its layer: the index
//! records the frame holding each file ([`super::index::Frame`]), and a reader fetches
//! that frame with one ranged GET and decompresses it alone.
//!
//! Frames are cut between entries: before an entry once the frame holds
//! [`FRAME_BYTES`], and around every file of [`OWN_FRAME`] or more, which gets a frame of
//! its own. So reading a large file costs its own compressed size, and a small one at
//! most a frame.

use std::io::{self, Read, Seek, Write};

use sha2::{Digest as _, Sha256};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use super::index::{Entry, Frame};
use crate::error::{Error, IoContext, Result};
use crate::format::ImageManifest;
use crate::repo::Repository;

/// A frame is closed before the next entry once it holds this much (uncompressed).
pub const FRAME_BYTES: u64 = 4 << 20;
/// Files at least this large start a frame and end it.
pub const OWN_FRAME: u64 = 1 << 20;

/// A closed frame: where it is in the compressed layer, and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedFrame {
    pub offset: u64,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// A zstd writer that can end a frame and start the next one, counting and hashing each
/// frame's compressed bytes as they go to `out`.
pub struct FrameEncoder<W: Write> {
    raw: zstd::stream::raw::Encoder<'static>,
    out: W,
    buf: Vec<u8>,
    /// Uncompressed bytes written into the current frame.
    plain: u64,
    /// Compressed bytes written so far (all frames), and where the current frame began.
    written: u64,
    frame_start: u64,
    hasher: Sha256,
}

impl<W: Write> FrameEncoder<W> {
    pub fn new(out: W, level: i32) -> io::Result<Self> {
        let mut raw = zstd::stream::raw::Encoder::new(level)?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        if workers > 1 {
            // Jobs small enough that a frame of a few MiB is compressed in parallel, and
            // without the overlap each job would re-read from the previous one (that
            // costs 20% more CPU, for a gain in ratio that frames give up anyway).
            raw.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(workers))?;
            raw.set_parameter(zstd::zstd_safe::CParameter::JobSize(1 << 20))?;
            raw.set_parameter(zstd::zstd_safe::CParameter::OverlapSizeLog(1))?;
        }
        raw.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))?;
        Ok(FrameEncoder {
            raw,
            out,
            buf: Vec::with_capacity(1 << 17),
            plain: 0,
            written: 0,
            frame_start: 0,
            hasher: Sha256::new(),
        })
    }

    /// Uncompressed bytes in the current frame.
    pub fn frame_plain(&self) -> u64 {
        self.plain
    }

    fn emit(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.hasher.update(&self.buf);
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Ends the current frame (if it holds anything) and returns it; what is written next
    /// starts a new frame.
    pub fn end_frame(&mut self) -> io::Result<Option<ClosedFrame>> {
        if self.plain == 0 {
            return Ok(None);
        }
        loop {
            self.buf.clear();
            let mut out = OutBuffer::around(&mut self.buf);
            let left = self.raw.finish(&mut out, true)?;
            self.emit()?;
            if left == 0 {
                break;
            }
        }
        self.raw.reinit()?;
        let frame = ClosedFrame {
            offset: self.frame_start,
            len: self.written - self.frame_start,
            sha256: std::mem::take(&mut self.hasher).finalize().into(),
        };
        self.frame_start = self.written;
        self.plain = 0;
        Ok(Some(frame))
    }

    /// Ends the last frame and returns the writer.
    pub fn finish(mut self) -> io::Result<(W, Option<ClosedFrame>)> {
        let last = self.end_frame()?;
        Ok((self.out, last))
    }
}

impl<W: Write> Write for FrameEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut input = InBuffer::around(data);
        while input.pos < data.len() {
            self.buf.clear();
            let mut out = OutBuffer::around(&mut self.buf);
            self.raw.run(&mut input, &mut out)?;
            self.emit()?;
        }
        self.plain += data.len() as u64;
        Ok(data.len())
    }

    /// Does not flush zstd (that would end a block early for nothing): the frame's bytes
    /// are complete only once it is ended.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A [`FrameEncoder`] on a thread of its own, so that reading files and writing tar
/// (this side) overlaps with compressing (the other): ending a frame waits for zstd's
/// workers to finish it, and on two cores that wait would otherwise stall the reads.
/// Closed frames come back as they are done ([`Compressor::closed`]).
pub struct Compressor<W: Write + Send + 'static> {
    tx: Option<std::sync::mpsc::SyncSender<Msg>>,
    closed: std::sync::mpsc::Receiver<ClosedFrame>,
    thread: Option<std::thread::JoinHandle<io::Result<W>>>,
    buf: Vec<u8>,
    /// Uncompressed bytes written since the frame began.
    plain: u64,
    /// Frames ended so far: the current frame's number.
    ended: usize,
}

enum Msg {
    Data(Vec<u8>),
    EndFrame,
}

/// Bytes handed to the compressing thread at a time, and how many such batches may wait.
const BATCH: usize = 1 << 20;
const QUEUE: usize = 8;

impl<W: Write + Send + 'static> Compressor<W> {
    pub fn new(out: W, level: i32) -> io::Result<Self> {
        let mut enc = FrameEncoder::new(out, level)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(QUEUE);
        let (closed_tx, closed) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("freezer-zstd".into())
            .spawn(move || -> io::Result<W> {
                for msg in rx {
                    match msg {
                        Msg::Data(d) => enc.write_all(&d)?,
                        Msg::EndFrame => {
                            if let Some(f) = enc.end_frame()? {
                                let _ = closed_tx.send(f);
                            }
                        }
                    }
                }
                let (out, last) = enc.finish()?;
                if let Some(f) = last {
                    let _ = closed_tx.send(f);
                }
                Ok(out)
            })?;
        Ok(Compressor {
            tx: Some(tx),
            closed,
            thread: Some(thread),
            buf: Vec::with_capacity(BATCH),
            plain: 0,
            ended: 0,
        })
    }

    /// Uncompressed bytes in the current frame.
    pub fn frame_plain(&self) -> u64 {
        self.plain
    }

    /// The current frame's number in the layer (frames are numbered from 0 as they are
    /// begun; [`Compressor::closed`] returns them in that order).
    pub fn frame_no(&self) -> usize {
        self.ended
    }

    fn send(&mut self, msg: Msg) -> io::Result<()> {
        let sent = self.tx.as_ref().map(|tx| tx.send(msg));
        if let Some(Ok(())) = sent {
            return Ok(());
        }
        // The thread stopped: its error says why (a full disk, say).
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(e),
            _ => Err(io::Error::other("the compression thread stopped")),
        }
    }

    fn send_batch(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH));
        self.send(Msg::Data(batch))
    }

    /// Ends the current frame; it shows in [`Compressor::closed`] once compressed.
    pub fn end_frame(&mut self) -> io::Result<()> {
        if self.plain == 0 {
            return Ok(());
        }
        self.send_batch()?;
        self.plain = 0;
        self.ended += 1;
        self.send(Msg::EndFrame)
    }

    /// The frames closed since the last call, in order; with `wait`, blocks for at least
    /// one unless none is coming.
    pub fn closed(&mut self, wait: bool) -> Vec<ClosedFrame> {
        let mut out: Vec<ClosedFrame> = self.closed.try_iter().collect();
        if out.is_empty() && wait {
            out.extend(self.closed.recv().ok());
        }
        out
    }

    /// Ends the last frame and waits for everything to be compressed; returns the writer
    /// and the frames closed since [`Compressor::closed`] was last called.
    pub fn finish(mut self) -> io::Result<(W, Vec<ClosedFrame>)> {
        self.send_batch()?;
        self.tx = None;
        let out = match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r?,
            _ => return Err(io::Error::other("the compression thread stopped")),
        };
        Ok((out, self.closed.try_iter().collect()))
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.plain += data.len() as u64;
        if self.buf.len() >= BATCH {
            self.send_batch()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads one regular file of a tree through its frame: a ranged read of the layer (the
/// frame only), checked against the frame's digest, decompressed on its own. The file's
/// bytes go to a temporary file first, so nothing reaches `out` before the check. None
/// when it cannot be read this way (an index written before frames, or an encrypted
/// repository), for the caller to read the whole layer instead.
pub fn read_file(
    repo: &Repository,
    manifest: &ImageManifest,
    e: &Entry,
    out: &mut dyn Write,
) -> Result<Option<u64>> {
    let (Some(f), Some(l)) = (&e.frame, e.layer) else {
        return Ok(None);
    };
    let mut tmp = tempfile::tempfile().ctx(|| "creating a temporary file".into())?;
    let mut written = None;
    let read = read_frame(
        repo,
        manifest,
        l,
        f,
        f.skip,
        &e.display_path(),
        &mut |path, entry| {
            if path != e.path.as_slice() {
                return Err(Error::integrity(format!(
                    "the entry there is {}, not {}",
                    String::from_utf8_lossy(path),
                    e.display_path()
                )));
            }
            written = Some(io::copy(entry, &mut tmp).ctx(|| "writing a temporary file".into())?);
            Ok(false)
        },
    )?;
    if !read {
        return Ok(None);
    }
    let written = written.ok_or_else(|| {
        Error::integrity(format!(
            "{}: no entry where its index says",
            e.display_path()
        ))
    })?;
    if written != e.size {
        return Err(Error::integrity(format!(
            "{}: {written} bytes, the index says {}",
            e.display_path(),
            e.size
        )));
    }
    tmp.seek(io::SeekFrom::Start(0))
        .and_then(|_| io::copy(&mut tmp, out))
        .map_err(|e| Error::io("writing the file", e))
        .map(Some)
}

/// What [`read_frame`] hands each regular file to: (its path, its content); returns
/// whether to go on.
pub type EachFile<'a> = dyn FnMut(&[u8], &mut dyn Read) -> Result<bool> + 'a;

/// A regular file in an unpacked frame: (path, offset of its data, size).
pub type FileInFrame = (Vec<u8>, u64, u64);

/// Reads frame `f` of layer `l` (one ranged read), decompresses it from `skip` on and
/// hands each regular file's tar entry to `each` (its path, its content) until `each`
/// returns false or the frame ends. Returns Ok(true) only once the frame's bytes are
/// checked against their digest, so the caller keeps what `each` wrote only then.
/// `what` names what is read, for errors.
pub fn read_frame(
    repo: &Repository,
    manifest: &ImageManifest,
    l: u32,
    f: &Frame,
    skip: u64,
    what: &str,
    each: &mut EachFile<'_>,
) -> Result<bool> {
    let read = with_frame(repo, manifest, l, f, what, &mut |dec, what| {
        io::copy(&mut dec.take(skip), &mut io::sink()).ctx(what)?;
        let mut archive = tar::Archive::new(dec);
        for entry in archive.entries().ctx(what)? {
            let mut entry = entry.ctx(what)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = entry.path_bytes().into_owned();
            if !each(&path, &mut entry).map_err(|e| crate::error::prefix(e, &what()))? {
                break;
            }
        }
        Ok(())
    })?;
    Ok(read.is_some())
}

/// Decompresses frame `f` of layer `l` whole into `out` (a file, from its start) and
/// lists the regular files in it: (path, offset of the data in `out`, size), once the
/// frame's bytes are checked against their digest.
pub fn unpack_frame(
    repo: &Repository,
    manifest: &ImageManifest,
    l: u32,
    f: &Frame,
    what: &str,
    out: &mut std::fs::File,
) -> Result<Option<Vec<FileInFrame>>> {
    let unpacked = with_frame(repo, manifest, l, f, what, &mut |dec, what| {
        io::copy(dec, out).ctx(what).map(drop)
    })?;
    if unpacked.is_none() {
        return Ok(None);
    }
    let what = || format!("reading the frame of {what}");
    out.seek(io::SeekFrom::Start(0)).ctx(what)?;
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(&*out);
    for entry in archive.entries().ctx(what)? {
        let entry = entry.ctx(what)?;
        if entry.header().entry_type() == tar::EntryType::Regular {
            let size = entry.header().entry_size().ctx(what)?;
            files.push((
                entry.path_bytes().into_owned(),
                entry.raw_file_position(),
                size,
            ));
        }
    }
    Ok(Some(files))
}

/// What [`with_frame`] runs on a frame: its decompressed bytes, and what names them.
type FrameBody<'a> = dyn FnMut(&mut dyn Read, &dyn Fn() -> String) -> Result<()> + 'a;

/// Fetches frame `f` of layer `l` with ranged reads and runs `body` on its decompressed
/// bytes; then reads the rest of the frame and checks its SHA-256. A digest mismatch is
/// reported as damage whatever `body` made of the bytes, so a caller uses what `body`
/// produced only on Ok(Some). Ok(None) when the repository cannot read ranges.
fn with_frame(
    repo: &Repository,
    manifest: &ImageManifest,
    l: u32,
    f: &Frame,
    what: &str,
    body: &mut FrameBody<'_>,
) -> Result<Option<()>> {
    let layer = manifest.layers.get(l as usize).ok_or_else(|| {
        Error::integrity(format!(
            "tree index: {what} is in layer {l}, which the manifest does not have"
        ))
    })?;
    if f.offset
        .checked_add(f.len)
        .is_none_or(|end| end > layer.size)
    {
        return Err(Error::integrity(format!(
            "tree index: the frame of {what} lies outside its layer {}",
            layer.digest.key()
        )));
    }
    let Some(range) = repo.open_range(&layer.digest, layer.size, f.offset, f.len)? else {
        return Ok(None);
    };
    let what = || {
        format!(
            "reading {what} from layer {} (bytes {}..{})",
            layer.digest.key(),
            f.offset,
            f.offset + f.len
        )
    };
    let mut hashed = Hashing {
        inner: range,
        hasher: Sha256::new(),
    };
    let result = (|| -> Result<()> {
        let mut dec = zstd::stream::read::Decoder::new(&mut hashed)
            .ctx(what)?
            .single_frame();
        body(&mut dec, &what)?;
        // The rest of the frame, so all of it is hashed.
        io::copy(&mut dec, &mut io::sink()).ctx(what)?;
        Ok(())
    })();
    io::copy(&mut hashed, &mut io::sink()).ctx(what)?;
    let actual: [u8; 32] = hashed.hasher.finalize().into();
    if actual != f.sha256 {
        return Err(Error::integrity(format!(
            "{}: the frame is damaged (its SHA-256 is {}, the index says {})",
            what(),
            hex::encode(actual),
            hex::encode(f.sha256)
        ))
        .with_hint(
            "restore that object from another copy of the repository, or read an older snapshot",
        ));
    }
    result.map(Some)
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressor_thread_writes_the_same_frames() {
        let a: Vec<u8> = (0..700_000u32)
            .flat_map(|i| (i / 7).to_le_bytes())
            .collect();
        let mut c = Compressor::new(Vec::new(), 3).unwrap();
        c.write_all(&a).unwrap();
        c.end_frame().unwrap();
        c.write_all(b"tail").unwrap();
        let mut frames = c.closed(true);
        let (out, rest) = c.finish().unwrap();
        frames.extend(rest);
        assert_eq!(frames.len(), 2);
        let frame = |f: &ClosedFrame| &out[f.offset as usize..(f.offset + f.len) as usize];
        assert_eq!(zstd::decode_all(frame(&frames[0])).unwrap(), a);
        assert_eq!(zstd::decode_all(frame(&frames[1])).unwrap(), b"tail");
        assert_eq!(frames[1].offset + frames[1].len, out.len() as u64);
    }

    #[test]
    fn frames_decode_alone_and_together() {
        let mut e = FrameEncoder::new(Vec::new(), 3).unwrap();
        let a: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        e.write_all(&a).unwrap();
        let f1 = e.end_frame().unwrap().unwrap();
        assert_eq!(
            e.end_frame().unwrap(),
            None,
            "an empty frame is not written"
        );
        e.write_all(b"second frame").unwrap();
        let (out, f2) = e.finish().unwrap();
        let f2 = f2.unwrap();
        assert_eq!(
            (f1.offset, f2.offset, f2.offset + f2.len),
            (0, f1.len, out.len() as u64)
        );
        let frame = |f: &ClosedFrame| &out[f.offset as usize..(f.offset + f.len) as usize];
        assert_eq!(zstd::decode_all(frame(&f1)).unwrap(), a);
        assert_eq!(zstd::decode_all(frame(&f2)).unwrap(), b"second frame");
        let sha: [u8; 32] = Sha256::digest(frame(&f2)).into();
        assert_eq!(sha, f2.sha256);
        // The whole layer is one zstd stream of both.
        let mut all = a.clone();
        all.extend_from_slice(b"second frame");
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), all);
    }
}
