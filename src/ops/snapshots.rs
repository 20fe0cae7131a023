//! `freezer snapshots`: what a repository holds, as the listing shows it.

use serde::Serialize;

use crate::db::{A_DB_ROWS, A_DB_TABLES};
use crate::error::Result;
use crate::format::*;
use crate::repo::{Repository, Snapshot};

#[derive(Debug, Serialize)]
pub struct SnapshotInfo {
    pub site: String,
    pub id: String,
    pub created: String,
    pub host: String,
    pub mode: String,
    pub parent: Option<String>,
    pub trees: Vec<TreeInfo>,
    pub databases: Vec<DbInfo>,
    /// The containers of a Docker site's snapshot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DbInfo {
    pub name: String,
    pub tables: u64,
    pub rows: u64,
    pub manifest: Digest,
}

#[derive(Debug, Serialize)]
pub struct TreeInfo {
    pub name: String,
    pub path: String,
    pub files: u64,
    pub bytes: u64,
    pub manifest: Digest,
}

impl From<&Snapshot> for SnapshotInfo {
    fn from(s: &Snapshot) -> Self {
        let num = |d: &Descriptor, k: &str| {
            d.annotations
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        SnapshotInfo {
            site: s.site.clone(),
            id: s.id.clone(),
            created: s.created().into(),
            host: s.annotation(A_HOST).into(),
            mode: s.mode_name().into(),
            parent: s.parent().map(str::to_string),
            databases: s
                .databases()
                .map(|(name, d)| DbInfo {
                    name: name.to_string(),
                    tables: num(d, A_DB_TABLES),
                    rows: num(d, A_DB_ROWS),
                    manifest: d.digest.clone(),
                })
                .collect(),
            trees: s
                .parts()
                .filter_map(|p| match p {
                    Part::Tree { name, path, image } => Some(TreeInfo {
                        name: name.to_string(),
                        path: path.to_string(),
                        files: num(image, A_TREE_FILES),
                        bytes: num(image, A_TREE_BYTES),
                        manifest: image.digest.clone(),
                    }),
                    _ => None,
                })
                .collect(),
            containers: s
                .parts()
                .filter_map(|p| match p {
                    Part::Container { name, .. } => Some(name.to_string()),
                    _ => None,
                })
                .collect(),
        }
    }
}

pub fn snapshots(repo: &Repository, site: Option<&str>) -> Result<Vec<SnapshotInfo>> {
    let mut out = Vec::new();
    let refs = repo.list_snapshots(site)?;
    if let (Some(site), true) = (site, refs.is_empty()) {
        return Err(repo.no_snapshots_of(site));
    }
    for r in refs {
        out.push(SnapshotInfo::from(&repo.read_snapshot(&r)?));
    }
    out.sort_by(|a, b| (&a.site, &a.created).cmp(&(&b.site, &b.created)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit::{failed, service, with_volume, Kit};

    #[test]
    fn snapshots_list_each_site_s_parts_oldest_first() {
        let kit = Kit::new(&[]);
        let dir = kit.dir_with("site", &[("a.txt", "x")]);
        let first = kit.freeze_dir("blog", &dir);
        let second = kit.freeze_dir("blog", &dir);
        let web = with_volume(service("shop", "web", "shop/web:1"), "shop_www", "/var/www");
        kit.freeze("shop", &[web], &[("volume.shop_www", "cat.jpg", "a cat")]);
        let all = snapshots(&kit.repo, None).unwrap();
        let ids: Vec<(&str, &str)> = all
            .iter()
            .map(|s| (s.site.as_str(), s.mode.as_str()))
            .collect();
        assert_eq!(
            ids,
            [("blog", "files"), ("blog", "files"), ("shop", "hydrated")]
        );
        assert_eq!(
            (all[0].id.as_str(), all[1].id.as_str()),
            (first.id.as_str(), second.id.as_str())
        );
        assert_eq!(all[0].trees[0].path, dir.display().to_string());
        assert_eq!(all[2].containers, ["shop-web-1"]);
        let blog = snapshots(&kit.repo, Some("blog")).unwrap();
        assert_eq!(blog.len(), 2);
    }

    #[test]
    fn a_site_without_snapshots_is_an_error_that_names_it() {
        let kit = Kit::new(&[]);
        let err = failed(snapshots(&kit.repo, Some("nowhere")));
        assert!(err.message.contains("nowhere"), "{err}");
        assert!(snapshots(&kit.repo, None).unwrap().is_empty());
    }
}
