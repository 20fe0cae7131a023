//! Opening sealed objects (SPEC.md §14.2), whole and streamed, with a fixed key: any
//! input is refused or opened, never a panic, and what opens was sealed with that key
//! (the fuzzer cannot forge a tag, so in practice everything is refused).
#![no_main]
use std::io::Read;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn keys() -> &'static freezer::crypto::Keys {
    static KEYS: OnceLock<freezer::crypto::Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        serde_json::from_str(
            r#"{"format":"freezer-keyring","id_key":"0101010101010101010101010101010101010101010101010101010101010101","epoch":1,"data_keys":{"1":"0202020202020202020202020202020202020202020202020202020202020202"},"recipients":[],"passphrase":false}"#,
        )
        .expect("a fixed keyring")
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    let whole = k.open("blob", "fuzz", data);
    let mut streamed = Vec::new();
    let r = k.opener("blob", "fuzz", data).read_to_end(&mut streamed);
    // Both ways agree.
    if let Ok(plain) = whole {
        assert!(r.is_ok());
        assert_eq!(plain, streamed);
    }
});
