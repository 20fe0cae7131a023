//! Splitting a dump file into statements (SPEC.md §10.1): never a panic, and every
//! statement is a piece of the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let range = data.as_ptr_range();
    for s in freezer::db::mysql::sql::statements(data) {
        let r = s.as_ptr_range();
        assert!(s.is_empty() || (range.start <= r.start && r.end <= range.end));
    }
});
