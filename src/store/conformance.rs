//! The promises every [`Store`] keeps, as one suite: run by the unit tests against the
//! memory and local stores and by the integration tests against Garage. A test helper,
//! it panics on the first broken promise.

use std::io::{Read, Write};

use super::Store;

/// Checks `store`, which must be empty, against every promise of [`Store`].
pub fn check(store: &dyn Store) {
    // Missing objects are NotFound, named.
    let e = store.get("blobs/missing").unwrap_err();
    assert_eq!(e.kind, crate::error::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("blobs/missing"), "{e}");
    assert!(store.open("blobs/missing").is_err());
    assert_eq!(store.size("blobs/missing").unwrap(), None);

    // Small put/get.
    store.put("a/one", b"1").unwrap();
    store.put("a/two", b"22").unwrap();
    store.put("b/three", b"333").unwrap();
    assert_eq!(store.get("a/two").unwrap(), b"22");
    assert_eq!(store.size("b/three").unwrap(), Some(3));
    let mut s = String::new();
    store.open("a/one").unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "1");

    // Ranged reads: inside, up to and past the end; a missing object is NotFound.
    store.put("a/range", b"0123456789").unwrap();
    assert_eq!(store.get_range("a/range", 2, 3).unwrap(), b"234");
    assert_eq!(store.get_range("a/range", 7, 3).unwrap(), b"789");
    assert_eq!(store.get_range("a/range", 0, 0).unwrap(), b"");
    let e = store.get_range("blobs/missing", 0, 1).unwrap_err();
    assert_eq!(e.kind, crate::error::ErrorKind::NotFound, "{e}");
    store.delete("a/range").unwrap();

    // Listing is by prefix, complete and sorted.
    let keys: Vec<String> = store
        .list("a/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["a/one", "a/two"]);
    assert_eq!(store.list("nothing/").unwrap(), vec![]);

    // A file larger than one multipart part (8 MiB) goes up in parts and streams back intact.
    let spool = store.spool_dir().unwrap();
    let mut f = tempfile::NamedTempFile::new_in(&spool).unwrap();
    let data: Vec<u8> = (0..(21u32 << 20) / 4)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
        .collect();
    f.write_all(&data).unwrap();
    let path = f.into_temp_path();
    store.put_file("blobs/large", &path).unwrap();
    assert!(!path.exists(), "put_file consumes the staged file");
    assert_eq!(store.size("blobs/large").unwrap(), Some(data.len() as u64));
    let mut back = Vec::new();
    store
        .open("blobs/large")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data, "large object differs after a round trip");

    // Delete, and deleting twice is fine.
    store.delete("a/one").unwrap();
    store.delete("a/one").unwrap();
    assert_eq!(store.size("a/one").unwrap(), None);

    // Keys that could escape a local root are refused.
    assert!(store.put("../escape", b"x").is_err());
    assert!(store.get("a/../../etc/passwd").is_err());
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_conforms() {
        super::check(&super::super::MemoryStore::new());
    }

    #[test]
    fn local_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        super::check(&super::super::LocalStore::new(dir.path().join("repo")));
    }
}
