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

use super::index::Entry;
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
            // Jobs small enough that a frame of a few MiB is still compressed in parallel.
            raw.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(workers))?;
            raw.set_parameter(zstd::zstd_safe::CParameter::JobSize(1 << 20))?;
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
    let layer = manifest.layers.get(l as usize).ok_or_else(|| {
        Error::integrity(format!(
            "tree index: {} is in layer {l}, which the manifest does not have",
            e.display_path()
        ))
    })?;
    if f.offset
        .checked_add(f.len)
        .is_none_or(|end| end > layer.size)
    {
        return Err(Error::integrity(format!(
            "tree index: the frame of {} lies outside its layer {}",
            e.display_path(),
            layer.digest.key()
        )));
    }
    let Some(range) = repo.open_range(&layer.digest, f.offset, f.len)? else {
        return Ok(None);
    };
    let what = || {
        format!(
            "reading {} from layer {} (bytes {}..{})",
            e.display_path(),
            layer.digest.key(),
            f.offset,
            f.offset + f.len
        )
    };
    let mut hashed = Hashing {
        inner: range,
        hasher: Sha256::new(),
    };
    let mut tmp = tempfile::tempfile().ctx(|| "creating a temporary file".into())?;
    let unpacked = (|| -> Result<u64> {
        let mut dec = zstd::stream::read::Decoder::new(&mut hashed)
            .ctx(what)?
            .single_frame();
        io::copy(&mut (&mut dec).take(f.skip), &mut io::sink()).ctx(what)?;
        let written = {
            let mut archive = tar::Archive::new(&mut dec);
            let mut entries = archive.entries().ctx(what)?;
            let mut entry = match entries.next() {
                Some(r) => r.ctx(what)?,
                None => return Err(Error::integrity(format!("{}: no entry there", what()))),
            };
            let path = entry.path_bytes().into_owned();
            if path != e.path || entry.header().entry_type() != tar::EntryType::Regular {
                return Err(Error::integrity(format!(
                    "{}: the entry there is {}, not the file",
                    what(),
                    String::from_utf8_lossy(&path)
                )));
            }
            io::copy(&mut entry, &mut tmp).ctx(what)?
        };
        // The rest of the frame, so all of it is hashed.
        io::copy(&mut dec, &mut io::sink()).ctx(what)?;
        Ok(written)
    })();
    // Damage shows as a digest mismatch, whatever the decompressor made of it.
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
    let written = unpacked?;
    if written != e.size {
        return Err(Error::integrity(format!(
            "{}: {written} bytes, the index says {}",
            what(),
            e.size
        )));
    }
    tmp.seek(io::SeekFrom::Start(0))
        .and_then(|_| io::copy(&mut tmp, out))
        .map_err(|e| Error::io("writing the file", e))
        .map(Some)
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
