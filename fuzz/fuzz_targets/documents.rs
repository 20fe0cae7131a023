//! The JSON documents of a repository: snapshot records and image indexes, manifests,
//! configs, database manifests, SQLite page maps and the repository config. Errors, never
//! a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

use freezer::format::*;

fuzz_target!(|data: &[u8]| {
    let _ = from_json::<ImageIndex>(data, "fuzz");
    if let Ok(m) = from_json::<ImageManifest>(data, "fuzz") {
        let _ = freezer::format::image_blobs(&m);
    }
    let _ = from_json::<ImageConfig>(data, "fuzz");
    let _ = from_json::<RepoConfig>(data, "fuzz");
    let _ = from_json::<freezer::db::DbManifest>(data, "fuzz");
    let _ = freezer::tree::pages::PageMap::parse(data, "fuzz");
});
