//! `freezer verify`: every blob a snapshot references is present and matches its digest.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::format::*;
use crate::progress::Progress;
use crate::repo::{Repository, SnapshotRef};

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub snapshots: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub snapshot: String,
    pub object: String,
    pub error: String,
}

/// Re-reads and hashes every blob the selected snapshots reference. Each blob is read once
/// even when many snapshots share it; every problem is reported, not just the first.
pub fn verify(
    repo: &Repository,
    site: Option<&str>,
    snap: Option<&str>,
    progress: &Progress,
) -> Result<VerifyReport> {
    let refs: Vec<SnapshotRef> = match (site, snap) {
        (Some(site), Some(_)) => {
            let s = repo.find_snapshot(site, snap)?;
            vec![SnapshotRef {
                site: s.site,
                id: s.id,
            }]
        }
        (site, _) => repo.list_snapshots(site)?,
    };
    // A typo in a monitored `verify SITE` must not pass as "0 snapshots, all intact".
    if let (Some(site), true) = (site, refs.is_empty()) {
        return Err(repo.no_snapshots_of(site));
    }
    let mut report = VerifyReport::default();
    let mut checked: HashMap<Digest, Option<String>> = HashMap::new();
    for r in &refs {
        report.snapshots += 1;
        let name = format!("{}:{}", r.site, r.id);
        let problem = |object: String, error: String| Problem {
            snapshot: name.clone(),
            object,
            error,
        };
        let snap = match repo.read_snapshot(r) {
            Ok(s) => s,
            Err(e) => {
                report
                    .problems
                    .push(problem(repo.record_key(r), e.to_string()));
                continue;
            }
        };
        for m in &snap.record.manifests {
            let mut blobs: Vec<Descriptor> = vec![m.clone()];
            match repo
                .read_blob(&m.digest)
                .and_then(|d| from_json::<ImageManifest>(&d, &m.digest.key()))
            {
                Ok(manifest) => {
                    let (more, err) = image_blobs(&manifest);
                    blobs.extend(more);
                    if let Some(e) = err {
                        report.problems.push(problem(m.digest.key(), e.to_string()));
                    }
                }
                Err(e) => report.problems.push(problem(m.digest.key(), e.to_string())),
            }
            for b in blobs {
                if !checked.contains_key(&b.digest) {
                    progress.set_label(format!("verifying {}", &b.digest.hex()[..12]));
                    let outcome = check_blob(repo, &b, progress);
                    if let Ok(n) = outcome {
                        report.blobs += 1;
                        report.bytes += n;
                    }
                    checked.insert(b.digest.clone(), outcome.err().map(|e| e.to_string()));
                }
                if let Some(err) = checked[&b.digest].clone() {
                    report.problems.push(problem(b.digest.key(), err));
                }
            }
        }
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

fn check_blob(repo: &Repository, d: &Descriptor, progress: &Progress) -> Result<u64> {
    let mut r = repo.open_blob(&d.digest)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n =
            std::io::Read::read(&mut r, &mut buf).ctx(|| format!("reading {}", d.digest.key()))?;
        if n == 0 {
            break;
        }
        progress.add_done(n as u64);
    }
    let n = r.bytes_read();
    if d.size != 0 && n != d.size {
        return Err(Error::integrity(format!(
            "object {} has {n} bytes, its descriptor says {}",
            d.digest.key(),
            d.size
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit::Kit;

    #[test]
    fn an_intact_repository_verifies_and_a_missing_blob_is_named() {
        let kit = Kit::new(&[]);
        let snap = kit.freeze_dir("shop", &kit.dir_with("site", &[("a.txt", "x")]));
        let r = verify(&kit.repo, None, None, &Progress::default()).unwrap();
        assert!(r.ok && r.problems.is_empty(), "{r:?}");
        assert_eq!(r.snapshots, 1);
        let manifest: crate::format::ImageManifest = crate::format::from_json(
            &kit.repo
                .read_blob(&snap.record.manifests[0].digest)
                .unwrap(),
            "m",
        )
        .unwrap();
        let layer = &manifest.layers[0].digest;
        kit.repo.delete_blob(&kit.repo.blob_name(layer)).unwrap();
        let r = verify(&kit.repo, None, None, &Progress::default()).unwrap();
        assert!(!r.ok);
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert!(r.problems[0].object.contains(layer.hex()), "{r:?}");
        assert!(r.problems[0].snapshot.contains(&snap.id), "{r:?}");
    }
}
