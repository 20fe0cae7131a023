//! The storage conformance suite (`freezer::store::conformance`) against Garage; the
//! unit tests run it against the memory and local stores.

use freezer::store::{S3Options, S3Store, Store};

use crate::common::*;

fn garage() -> S3Store {
    services();
    let env = |k: &str| std::env::var(k).ok();
    let opts = S3Options {
        endpoint: env("AWS_ENDPOINT_URL"),
        region: env("AWS_REGION"),
        access_key_id: env("AWS_ACCESS_KEY_ID"),
        secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
        ..Default::default()
    };
    S3Store::new(&bucket(), &unique("conformance"), &opts).unwrap()
}

#[test]
fn garage_store_conforms() {
    freezer::store::conformance::check(&garage());
}

/// More keys than one list page (Garage returns 1000 at most) are all listed.
#[test]
fn garage_listing_paginates() {
    let store = garage();
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = &store;
            s.spawn(move || {
                for i in (t..1050).step_by(4) {
                    store
                        .put(&format!("snapshots/site/{i:05}.json"), b"{}")
                        .unwrap();
                }
            });
        }
    });
    let listed = store.list("snapshots/").unwrap();
    assert_eq!(listed.len(), 1050);
    assert_eq!(listed[0].key, "snapshots/site/00000.json");
    assert_eq!(listed[1049].key, "snapshots/site/01049.json");
}
