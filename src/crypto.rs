//! Client-side encryption of a repository (SPEC.md §14).
//!
//! Keys: a repository holds a **keyring** — a random identity key (names objects) and one
//! data key per epoch (encrypts them) — stored only wrapped with age: to X25519 recipients
//! (`keys/recipients.age`) and/or to a passphrase (`keys/passphrase.age`, scrypt). Removing
//! a key starts a new epoch whose data key the removed party never saw.
//!
//! Objects: every blob and record is sealed in 1 MiB segments with AES-256-GCM under a
//! per-object key derived from the epoch's data key and a random salt; each segment's
//! nonce is its counter and a last-segment flag, and the object's key in the store is the
//! associated data, so a modified, truncated, reordered or swapped object fails to open.
//! Blob names are HMAC-SHA256 of the plaintext digest under the identity key: the same
//! content gets the same name (deduplication), and nobody without the key can tell what
//! content a name stands for.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{into_io, Error, ErrorKind, IoContext, Result};
use crate::format::Digest;
use crate::store::Store;

pub const SCHEME: &str = "aes-256-gcm-stream/hmac-sha256-names/age-keyring";
pub const RECIPIENTS_KEY: &str = "keys/recipients.age";
pub const PASSPHRASE_KEY: &str = "keys/passphrase.age";
/// The associated data of every blob. A blob is written before its digest (and so its
/// name) is known; a blob stored under another name is caught by the digest check that
/// follows every read.
pub const BLOB_AAD: &str = "freezer blob";

const MAGIC: &[u8; 4] = b"FRZ1";
const HEADER: usize = 4 + 4 + 16;
const SEGMENT: usize = 1 << 20;
const TAG: usize = 16;

/// The secrets of an encrypted repository, as decrypted from its keyring.
#[derive(Clone, Serialize, Deserialize)]
pub struct Keys {
    pub format: String,
    /// Names objects: blob names and site directories.
    #[serde(with = "hex_key")]
    pub id_key: [u8; 32],
    /// The epoch new objects are sealed in.
    pub epoch: u32,
    /// Every epoch's data key, so that current keys read all earlier snapshots.
    #[serde(with = "hex_keys")]
    pub data_keys: BTreeMap<u32, [u8; 32]>,
    /// The X25519 recipients (public keys) the keyring is wrapped to.
    pub recipients: Vec<String>,
    /// Whether it is also wrapped to a passphrase.
    pub passphrase: bool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("epoch", &self.epoch)
            .field("recipients", &self.recipients)
            .field("passphrase", &self.passphrase)
            .finish_non_exhaustive()
    }
}

mod hex_key {
    pub fn serialize<S: serde::Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("a key is 32 bytes"))
    }
}

mod hex_keys {
    use std::collections::BTreeMap;
    pub fn serialize<S: serde::Serializer>(
        k: &BTreeMap<u32, [u8; 32]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(k.iter().map(|(e, k)| (e.to_string(), hex::encode(k))))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u32, [u8; 32]>, D::Error> {
        let m: BTreeMap<String, String> = serde::Deserialize::deserialize(d)?;
        m.into_iter()
            .map(|(e, k)| {
                let e = e.parse().map_err(serde::de::Error::custom)?;
                let v = hex::decode(k).map_err(serde::de::Error::custom)?;
                let k: [u8; 32] = v
                    .try_into()
                    .map_err(|_| serde::de::Error::custom("a key is 32 bytes"))?;
                Ok((e, k))
            })
            .collect()
    }
}

fn random32() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut k);
    k
}

impl Keys {
    /// A new keyring: fresh identity key, epoch 0.
    pub fn generate() -> Keys {
        Keys {
            format: "freezer-keyring-v1".into(),
            id_key: random32(),
            epoch: 0,
            data_keys: BTreeMap::from([(0, random32())]),
            recipients: vec![],
            passphrase: false,
        }
    }

    /// Starts a new epoch (after a key is removed): new objects use a data key that no
    /// earlier keyring held.
    pub fn rotate(&mut self) {
        self.epoch += 1;
        self.data_keys.insert(self.epoch, random32());
    }

    fn mac(key: &[u8; 32], label: &str, data: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// The stored name of a blob: keyed, so equal content gets equal names.
    pub fn blob_name(&self, d: &Digest) -> String {
        hex::encode(Self::mac(&self.id_key, "blob", d.hex().as_bytes()))
    }

    /// The directory of a site's records.
    pub fn site_dir(&self, site: &str) -> String {
        hex::encode(&Self::mac(&self.id_key, "site", site.as_bytes())[..16])
    }

    fn object_key(&self, epoch: u32, salt: &[u8]) -> Result<LessSafeKey> {
        let data_key = self.data_keys.get(&epoch).ok_or_else(|| {
            Error::new(
                ErrorKind::Unreachable,
                format!(
                    "the object is sealed in key epoch {epoch}, which this keyring (epoch {}) cannot open",
                    self.epoch
                ),
            )
            .with_hint("either the key was removed from the repository (it cannot read what was written after its removal), or the repository's keys/ were replaced by an older copy")
        })?;
        let k = Self::mac(data_key, "object", salt);
        Ok(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &k).expect("32 bytes"),
        ))
    }

    /// The size of a sealed object of `n` plaintext bytes.
    pub fn sealed_size(n: u64) -> u64 {
        let segments = n.div_ceil(SEGMENT as u64).max(1);
        HEADER as u64 + n + segments * TAG as u64
    }

    /// The plaintext size of a sealed object of `n` bytes (the inverse of `sealed_size`).
    pub fn plain_size(n: u64) -> u64 {
        let rest = n.saturating_sub(HEADER as u64);
        let segments = rest.div_ceil((SEGMENT + TAG) as u64).max(1);
        rest.saturating_sub(segments * TAG as u64)
    }

    /// Seals a whole (small) object; `aad` binds it to where it belongs (a record's key,
    /// or [`BLOB_AAD`]).
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::sealed_size(plain.len() as u64) as usize);
        let mut w = self.sealer(aad, &mut out);
        w.write_all(plain).expect("writing to memory");
        w.finish().expect("writing to memory");
        out
    }

    /// A writer that seals everything written to it into `out`; `finish` ends the object.
    pub fn sealer<'a, W: Write>(&self, aad: &str, out: W) -> Sealer<'a, W> {
        let mut salt = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut salt);
        Sealer {
            cipher: self
                .object_key(self.epoch, &salt)
                .expect("the current epoch has a key"),
            header: Some({
                let mut h = Vec::with_capacity(HEADER);
                h.extend_from_slice(MAGIC);
                h.extend_from_slice(&self.epoch.to_be_bytes());
                h.extend_from_slice(&salt);
                h
            }),
            aad: aad.to_string(),
            out,
            buf: Vec::with_capacity(SEGMENT),
            counter: 0,
            _p: std::marker::PhantomData,
        }
    }

    /// Opens a whole (small) sealed object; `name` names it in errors.
    pub fn open(&self, aad: &str, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(sealed.len());
        self.opener(aad, name, sealed)
            .read_to_end(&mut out)
            .ctx(|| format!("decrypting {name}"))?;
        Ok(out)
    }

    /// A reader that opens a sealed object as it streams.
    pub fn opener<R: Read>(&self, aad: &str, name: &str, input: R) -> Opener<R> {
        Opener {
            keys: self.clone(),
            aad: aad.to_string(),
            name: name.to_string(),
            input,
            cipher: None,
            plain: Vec::new(),
            pos: 0,
            counter: 0,
            done: false,
            peek: None,
        }
    }
}

/// Bytes before the first segment of a sealed object (magic, epoch, salt).
pub const SEALED_HEADER: u64 = HEADER as u64;
/// Plaintext bytes per segment, and what sealing adds to each.
pub const SEGMENT_BYTES: u64 = SEGMENT as u64;
pub const SEGMENT_TAG: u64 = TAG as u64;

/// Opens single segments of one sealed object, for reading part of it: the object's key
/// comes from its header, and each segment is authenticated on its own (its number and
/// whether it is the last are in its nonce, so a segment moved, dropped or taken from
/// another object fails).
pub struct SegmentOpener {
    cipher: LessSafeKey,
    aad: String,
    name: String,
}

impl Keys {
    /// A [`SegmentOpener`] for the object whose first [`SEALED_HEADER`] bytes are `header`.
    pub fn segment_opener(&self, aad: &str, name: &str, header: &[u8]) -> Result<SegmentOpener> {
        if header.len() < HEADER || &header[..4] != MAGIC {
            return Err(damaged(name, "it has no valid header"));
        }
        let epoch = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        Ok(SegmentOpener {
            cipher: self
                .object_key(epoch, &header[8..24])
                .map_err(|e| crate::error::prefix(e, &format!("opening {name}")))?,
            aad: aad.to_string(),
            name: name.to_string(),
        })
    }
}

impl SegmentOpener {
    /// Opens segment number `index` (sealed bytes, tag included) in place; `last` says
    /// whether it is the object's last segment.
    pub fn open(&self, index: u64, last: bool, seg: &mut Vec<u8>) -> Result<()> {
        let n = self
            .cipher
            .open_in_place(nonce(index, last), Aad::from(self.aad.as_bytes()), seg)
            .map_err(|_| {
                damaged(
                    &self.name,
                    "its authentication failed (modified, truncated, or not the object stored under this name)",
                )
            })?
            .len();
        seg.truncate(n);
        Ok(())
    }
}

/// Segment nonces never repeat under one key: each object has its own key (random salt)
/// and numbers its segments.
fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    Nonce::assume_unique_for_key(n)
}

fn damaged(name: &str, why: &str) -> Error {
    Error::integrity(format!(
        "object {name} is damaged or was tampered with: {why}"
    ))
    .with_hint("restore that object from another copy of the repository, or thaw an older snapshot")
}

/// Seals segment by segment; `finish` seals the last one.
pub struct Sealer<'a, W: Write> {
    // ring's AES-GCM, not the aes-gcm crate: about six times faster on this project's
    // machines (AES-NI with AVX2/VAES in assembly), which is most of what encryption
    // costs a freeze. The bytes are the same standard AES-256-GCM.
    cipher: LessSafeKey,
    header: Option<Vec<u8>>,
    aad: String,
    out: W,
    buf: Vec<u8>,
    counter: u64,
    _p: std::marker::PhantomData<&'a ()>,
}

impl<W: Write> Sealer<'_, W> {
    fn emit(&mut self, last: bool) -> std::io::Result<()> {
        if let Some(h) = self.header.take() {
            self.out.write_all(&h)?;
        }
        // In place: no copy of the segment on the way out.
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                nonce(self.counter, last),
                Aad::from(self.aad.as_bytes()),
                &mut self.buf,
            )
            .map_err(|_| std::io::Error::other("encryption failed"))?;
        self.out.write_all(&self.buf)?;
        self.out.write_all(tag.as_ref())?;
        self.counter += 1;
        self.buf.clear();
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.emit(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealer<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            // A full segment is sealed only once more data follows it: the last segment
            // carries the flag, and is never empty unless the whole object is.
            if self.buf.len() == SEGMENT {
                self.emit(false)?;
            }
            let n = rest.len().min(SEGMENT - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens segment by segment; every segment is authenticated before a byte of it is
/// returned, and a missing last segment (truncation) is an error.
pub struct Opener<R> {
    keys: Keys,
    aad: String,
    name: String,
    input: R,
    cipher: Option<SegmentOpener>,
    plain: Vec<u8>,
    pos: usize,
    counter: u64,
    done: bool,
    peek: Option<u8>,
}

impl<R: Read> Opener<R> {
    fn read_full(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        if let (Some(b), false) = (self.peek.take(), buf.is_empty()) {
            buf[0] = b;
            n = 1;
        }
        while n < buf.len() {
            match self.input.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }

    fn next_segment(&mut self) -> Result<()> {
        if self.cipher.is_none() {
            let mut h = [0u8; HEADER];
            let n = self
                .read_full(&mut h)
                .map_err(|e| Error::io(format!("reading {}", self.name), e))?;
            self.cipher = Some(self.keys.segment_opener(&self.aad, &self.name, &h[..n])?);
        }
        // Decrypted in place, in the buffer of the previous segment.
        let mut seg = std::mem::take(&mut self.plain);
        seg.resize(SEGMENT + TAG, 0);
        let n = self
            .read_full(&mut seg)
            .map_err(|e| Error::io(format!("reading {}", self.name), e))?;
        seg.truncate(n);
        // The last segment is the one not followed by more data.
        let last = if n < SEGMENT + TAG {
            true
        } else {
            let mut b = [0u8; 1];
            let more = self
                .input
                .read(&mut b)
                .map_err(|e| Error::io(format!("reading {}", self.name), e))?;
            if more == 1 {
                self.peek = Some(b[0]);
            }
            more == 0
        };
        if n < TAG {
            return Err(damaged(&self.name, "it is truncated"));
        }
        self.cipher
            .as_ref()
            .expect("set above")
            .open(self.counter, last, &mut seg)?;
        self.counter += 1;
        self.plain = seg;
        self.pos = 0;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_segment().map_err(into_io)?;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// the keyring and who can open it

/// What the user gave to open (or create) an encrypted repository. Never printed.
#[derive(Default, Clone)]
pub struct Credentials {
    /// age X25519 identities (`AGE-SECRET-KEY-1…`).
    pub identities: Vec<String>,
    pub passphrase: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identities", &self.identities.len())
            .field("passphrase", &self.passphrase.is_some())
            .finish()
    }
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.passphrase.is_none()
    }
}

/// Parses age identities from the text of an identity file (or one key).
pub fn parse_identities(text: &str, what: &str) -> Result<Vec<String>> {
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for k in &keys {
        k.parse::<age::x25519::Identity>().map_err(|_| {
            Error::usage(format!(
                "{what} holds a line that is not an age identity (AGE-SECRET-KEY-1…)"
            ))
        })?;
    }
    if keys.is_empty() {
        return Err(Error::usage(format!("{what} holds no age identity")));
    }
    Ok(keys)
}

/// Checks an age recipient (`age1…`).
pub fn parse_recipient(s: &str) -> Result<String> {
    let s = s.trim();
    s.parse::<age::x25519::Recipient>()
        .map_err(|e| Error::usage(format!("{s:?} is not an age recipient (age1…): {e}")))?;
    Ok(s.to_string())
}

/// Where this machine keeps the highest key epoch it has used of one repository (named
/// by a keyed hash, so the file says nothing about the repository).
fn epoch_file(keys: &Keys) -> std::path::PathBuf {
    let id = hex::encode(&Keys::mac(&keys.id_key, "keyring-epoch", b"")[..16]);
    crate::sys::cache_dir().join("keyrings").join(id)
}

fn seen_epoch(file: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Rollback protection (SPEC.md §14.1): a keyring older than one this machine has used
/// — an old copy put back, e.g. from before a `key remove` — is refused, so nothing is
/// sealed again under a data key a removed party knows. Then remembers this epoch.
pub fn check_epoch(keys: &Keys, location: &str) -> Result<()> {
    let file = epoch_file(keys);
    match seen_epoch(&file) {
        Some(seen) if seen > keys.epoch => Err(Error::integrity(format!(
            "the keyring of repository {location} is at key epoch {}, but this machine has used its epoch {seen}: {RECIPIENTS_KEY} or {PASSPHRASE_KEY} was replaced by an older copy",
            keys.epoch
        ))
        .with_hint(format!(
            "put the current keyring back from a copy (or run `freezer key remove` again); if the whole repository was deliberately restored from an older copy, delete {}",
            file.display()
        ))),
        Some(seen) if seen == keys.epoch => Ok(()),
        _ => {
            write_epoch(&file, keys.epoch);
            Ok(())
        }
    }
}

/// Records `epoch` as used on this machine (best effort: without a writable cache there
/// is no rollback protection, and nothing else changes).
fn write_epoch(file: &std::path::Path, epoch: u32) {
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = file.with_extension("tmp");
    if std::fs::write(&tmp, format!("{epoch}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, file);
    }
}

/// Writes the keyring wrapped to its recipients and passphrase; removes a wrapping that
/// no longer applies.
pub fn write_keyring(store: &dyn Store, keys: &Keys, new_passphrase: Option<&str>) -> Result<()> {
    let plain = serde_json::to_vec(keys).expect("keys serialize");
    if keys.recipients.is_empty() {
        let _ = store.delete(RECIPIENTS_KEY);
    } else {
        let recipients: Vec<age::x25519::Recipient> = keys
            .recipients
            .iter()
            .map(|r| {
                r.parse()
                    .map_err(|e| Error::usage(format!("recipient {r}: {e}")))
            })
            .collect::<Result<_>>()?;
        let enc =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| Error::other(format!("wrapping the keyring: {e}")))?;
        store.put(RECIPIENTS_KEY, &age_wrap(enc, &plain)?)?;
    }
    match (keys.passphrase, new_passphrase) {
        (false, _) => {
            let _ = store.delete(PASSPHRASE_KEY);
        }
        (true, Some(p)) => {
            let enc = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(p.to_string()));
            store.put(PASSPHRASE_KEY, &age_wrap(enc, &plain)?)?;
        }
        (true, None) => {
            return Err(Error::usage(
                "the keyring changed and is also wrapped to a passphrase: give the passphrase (FREEZER_PASSPHRASE or --passphrase-file) so it can be wrapped again",
            ))
        }
    }
    // A new epoch (key remove) is this machine's from now on.
    let file = epoch_file(keys);
    if seen_epoch(&file).is_none_or(|seen| seen < keys.epoch) {
        write_epoch(&file, keys.epoch);
    }
    Ok(())
}

fn age_wrap(enc: age::Encryptor, plain: &[u8]) -> Result<Vec<u8>> {
    let mut out = vec![];
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| Error::other(format!("wrapping the keyring: {e}")))?;
    w.write_all(plain)
        .and_then(|_| w.finish())
        .map_err(|e| Error::other(format!("wrapping the keyring: {e}")))?;
    Ok(out)
}

/// Opens the keyring with whatever the user gave.
pub fn open_keyring(store: &dyn Store, creds: &Credentials) -> Result<Keys> {
    if creds.is_empty() {
        return Err(Error::usage(format!(
            "repository {} is encrypted, and no key was given",
            store.location()
        ))
        .with_hint("pass --identity FILE (or FREEZER_IDENTITY) with an age identity it is encrypted to, or set FREEZER_PASSPHRASE (or --passphrase-file FILE)"));
    }
    let mut tried = Vec::new();
    if !creds.identities.is_empty() {
        match store.get(RECIPIENTS_KEY) {
            Ok(data) => {
                let ids: Vec<age::x25519::Identity> = creds
                    .identities
                    .iter()
                    .filter_map(|k| k.parse().ok())
                    .collect();
                if let Some(keys) = age_open(&data, ids.iter().map(|i| i as &dyn age::Identity))? {
                    return Ok(keys);
                }
                tried.push("the given identities");
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                tried.push("identities (the repository has no recipients)")
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(p) = &creds.passphrase {
        match store.get(PASSPHRASE_KEY) {
            Ok(data) => {
                let id = age::scrypt::Identity::new(age::secrecy::SecretString::from(p.clone()));
                if let Some(keys) = age_open(&data, std::iter::once(&id as &dyn age::Identity))? {
                    return Ok(keys);
                }
                tried.push("the passphrase");
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                tried.push("a passphrase (the repository has none)")
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::new(
        ErrorKind::Unreachable,
        format!(
            "none of the keys given opens repository {} (tried {})",
            store.location(),
            tried.join(" and ")
        ),
    )
    .with_hint("`freezer key list` (with a working key) shows who can open it"))
}

fn age_open<'a>(
    data: &[u8],
    ids: impl Iterator<Item = &'a dyn age::Identity>,
) -> Result<Option<Keys>> {
    let d = age::Decryptor::new_buffered(data)
        .map_err(|e| Error::integrity(format!("the keyring is damaged: {e}")))?;
    match d.decrypt(ids) {
        Ok(mut r) => {
            let mut plain = vec![];
            r.read_to_end(&mut plain)
                .map_err(|e| Error::integrity(format!("the keyring is damaged: {e}")))?;
            let keys: Keys = serde_json::from_slice(&plain)
                .map_err(|e| Error::integrity(format!("the keyring is not valid: {e}")))?;
            Ok(Some(keys))
        }
        Err(age::DecryptError::NoMatchingKeys) | Err(age::DecryptError::DecryptionFailed) => {
            Ok(None)
        }
        Err(e) => Err(Error::integrity(format!(
            "the keyring cannot be opened: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_round_trip_and_refuse_tampering() {
        let keys = Keys::generate();
        for len in [0usize, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = keys.seal("snapshots/x", &plain);
            assert_eq!(
                sealed.len() as u64,
                Keys::sealed_size(len as u64),
                "len {len}"
            );
            assert_eq!(Keys::plain_size(sealed.len() as u64), len as u64);
            assert_eq!(keys.open("snapshots/x", "x", &sealed).unwrap(), plain);
            // Another name (a swapped object) does not open.
            assert!(keys.open("snapshots/y", "y", &sealed).is_err());
            // A flipped bit anywhere does not open.
            for at in [0, HEADER, sealed.len() / 2, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                assert!(
                    keys.open("snapshots/x", "x", &bad).is_err(),
                    "len {len} at {at}"
                );
            }
            // Truncated at a segment boundary (the flag) or anywhere does not open.
            if len > SEGMENT {
                let cut = HEADER + SEGMENT + TAG;
                assert!(keys.open("snapshots/x", "x", &sealed[..cut]).is_err());
            }
            assert!(keys
                .open("snapshots/x", "x", &sealed[..sealed.len() - 1])
                .is_err());
        }
    }

    #[test]
    fn names_are_keyed() {
        let (a, b) = (Keys::generate(), Keys::generate());
        let d = Digest::of(b"content");
        assert_eq!(a.blob_name(&d), a.blob_name(&d));
        assert_ne!(a.blob_name(&d), b.blob_name(&d));
        assert_ne!(a.blob_name(&d), d.hex());
    }

    use proptest::prelude::*;

    /// Bytes that are cheap to make in any length: a seeded xorshift.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the length and however the writes are cut, an object opens to its
        /// bytes (read in any piece sizes), only under its own name, and not at all once
        /// any byte changes or it is cut short.
        #[test]
        fn any_object_opens_to_what_was_sealed(
            len in prop_oneof![0usize..4096, (SEGMENT - 64)..(SEGMENT + 64), 0usize..(2 * SEGMENT + 100)],
            seed in any::<u64>(),
            write in 1usize..70_000,
            read in 1usize..70_000,
            flip in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let keys = Keys::generate();
            let plain = noise(len, seed);
            let mut sealed = Vec::new();
            let mut w = keys.sealer("blobs/x", &mut sealed);
            for piece in plain.chunks(write) {
                w.write_all(piece).unwrap();
            }
            w.finish().unwrap();
            prop_assert_eq!(sealed.len() as u64, Keys::sealed_size(len as u64));

            let mut r = keys.opener("blobs/x", "x", &sealed[..]);
            let mut back = Vec::new();
            let mut buf = vec![0u8; read];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
            prop_assert!(back == plain, "{} bytes differ after sealing", len);
            prop_assert!(keys.open("blobs/y", "y", &sealed).is_err());
            let mut bad = sealed.clone();
            bad[flip.index(sealed.len())] ^= 1;
            prop_assert!(keys.open("blobs/x", "x", &bad).is_err());
            let short = cut.index(sealed.len());
            prop_assert!(keys.open("blobs/x", "x", &sealed[..short]).is_err());
        }
    }
}
