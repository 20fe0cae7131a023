//! The command line's texts, pinned: `--dry-run` plans and error messages, from a real
//! repository in memory and real directories (no services needed). A change to what a
//! user reads shows up here as a snapshot diff (`cargo insta review`, or
//! `INSTA_UPDATE=always cargo test --lib` and a look at the diff).

use std::path::Path;

use crate::docker::Endpoint;
use crate::error::Error;
use crate::format::Mode;
use crate::ops::{self, DbThawFlags, FreezeRequest, KeyChange, NewKeys};
use crate::repo::Repository;
use crate::store::MemoryStore;
use crate::tree::TreeSpec;

fn repo() -> Repository {
    Repository::init(Box::new(MemoryStore::new())).unwrap()
}

/// A site of two directories with a few files.
fn site(root: &Path) -> Vec<TreeSpec> {
    let mut trees = Vec::new();
    for (name, files) in [("www", 3), ("uploads", 2)] {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for i in 0..files {
            std::fs::write(dir.join("sub").join(format!("f{i}")), vec![b'x'; 100 * i]).unwrap();
        }
        trees.push(TreeSpec::new(name, dir));
    }
    trees
}

fn request(site: &str, trees: Vec<TreeSpec>) -> FreezeRequest {
    FreezeRequest {
        site: site.into(),
        trees,
        databases: vec![],
        host: None,
        engine: Endpoint::default(),
        mode: None,
        stop: false,
        with_images: false,
        with_writable_layer: false,
        db_jobs: 2,
        db_chunk_bytes: None,
        db_with_users: false,
        lock_wait: std::time::Duration::from_secs(1),
        excludes: Default::default(),
        hooks: Default::default(),
        sqlite: Default::default(),
        consistency: Default::default(),
    }
}

/// Replaces what differs from run to run: the temporary directory, snapshot ids.
fn stable(text: &str, tmp: &Path, ids: &[&str]) -> String {
    let mut t = text.replace(&tmp.display().to_string(), "[TMP]");
    for (i, id) in ids.iter().enumerate() {
        t = t.replace(id, &format!("[SNAPSHOT {i}]"));
    }
    t
}

fn error_text(e: &Error) -> String {
    let mut t = format!("exit {}: {e}", e.kind.exit_code());
    if let Some(h) = &e.hint {
        t.push_str(&format!("\nhint: {h}"));
    }
    t
}

#[test]
fn freeze_dry_run_plans() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    let trees = site(tmp.path());
    let plan = ops::plan_site(&repo, request("shop", trees.clone())).unwrap();
    assert_eq!(plan.mode(), Mode::Files);
    insta::assert_snapshot!(
        "freeze_plan_first",
        stable(&super::freeze::plan_text(&plan), tmp.path(), &[])
    );
    let first = ops::freeze(&repo, &plan, &Default::default()).unwrap();
    let plan = ops::plan_site(&repo, request("shop", trees)).unwrap();
    insta::assert_snapshot!(
        "freeze_plan_with_parent",
        stable(
            &super::freeze::plan_text(&plan),
            tmp.path(),
            &[&first.snapshot]
        )
    );
}

#[test]
fn thaw_dry_run_plans() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    let plan = ops::plan_site(&repo, request("shop", site(tmp.path()))).unwrap();
    let snap = ops::freeze(&repo, &plan, &Default::default())
        .unwrap()
        .snapshot;
    let req = |into: &Path, replace: bool| ops::ThawRequest {
        site: "shop".into(),
        into: Some(into.to_path_buf()),
        replace,
        db: DbThawFlags {
            jobs: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let text = |into: &Path, replace: bool| match ops::plan_site_thaw(&repo, req(into, replace))
        .map(|p| p.kind)
    {
        Ok(ops::ThawKind::Files(p)) => stable(
            &super::thaw::files_plan_text(&p.view(), &repo.location()),
            tmp.path(),
            &[&snap],
        ),
        Ok(ops::ThawKind::Docker(_) | ops::ThawKind::Onto(_)) => {
            panic!("a files snapshot planned as a Docker site")
        }
        Err(e) => stable(&error_text(&e), tmp.path(), &[&snap]),
    };
    let into = tmp.path().join("restore");
    insta::assert_snapshot!("thaw_plan_new_directory", text(&into, false));
    // The original paths, under --into: exist now, so they are replaced only when asked.
    let tmp_rel = tmp.path().strip_prefix("/").unwrap();
    std::fs::create_dir_all(into.join(tmp_rel).join("www/old")).unwrap();
    insta::assert_snapshot!("thaw_refuses_a_non_empty_destination", text(&into, false));
    insta::assert_snapshot!("thaw_plan_replace", text(&into, true));
}

#[test]
fn error_texts() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo();
    let trees = site(tmp.path());
    let mut texts = Vec::new();
    let mut case = |what: &str, e: Error| {
        texts.push(format!(
            "## {what}\n{}\n",
            stable(&error_text(&e), tmp.path(), &[])
        ))
    };

    let mut r = request("shop", vec![]);
    r.mode = Some(Mode::Files);
    case("nothing to freeze", ops::plan_site(&repo, r).unwrap_err());
    let mut r = request("shop", trees.clone());
    r.stop = true;
    case(
        "--stop on a files site",
        ops::plan_site(&repo, r).unwrap_err(),
    );
    let mut r = request("shop", trees.clone());
    r.host = Some("web2".into());
    case(
        "SITE@HOST on a files site",
        ops::plan_site(&repo, r).unwrap_err(),
    );
    let mut r = request("shop", trees.clone());
    r.mode = Some(Mode::Dehydrated);
    case(
        "dehydrated without a database",
        ops::plan_site(&repo, r).unwrap_err(),
    );
    case(
        "invalid site name",
        ops::plan_site(&repo, request("-shop", trees.clone())).unwrap_err(),
    );
    let mut missing = trees.clone();
    missing[0].path = tmp.path().join("gone");
    case(
        "missing directory",
        ops::plan_site(&repo, request("shop", missing)).unwrap_err(),
    );
    case(
        "no snapshot of the site",
        repo.find_snapshot("nobody", None).unwrap_err(),
    );
    let mut plain = self::repo();
    case(
        "key change on a plain repository",
        ops::change_keys(&mut plain, KeyChange::List, &Default::default()).unwrap_err(),
    );
    case(
        "init --encrypt without a key",
        ops::init(Box::new(MemoryStore::new()), Some(NewKeys::default()))
            .err()
            .unwrap(),
    );
    insta::assert_snapshot!("error_texts", texts.join("\n"));
}
