//! The tree index reader (SPEC.md §6) on arbitrary bytes: errors, never a panic, never an
//! allocation sized by a length field; every path it yields is relative and inside.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = freezer::tree::index::IndexReader::new(data, "fuzz") else {
        return;
    };
    for _ in 0..100_000 {
        match r.next_entry() {
            Ok(Some(e)) => {
                if e.path != b"." {
                    assert!(freezer::tree::index::check_relative(&e.path).is_ok());
                }
            }
            Ok(None) => {
                let _ = r.trailer();
                return;
            }
            Err(_) => return,
        }
    }
});
