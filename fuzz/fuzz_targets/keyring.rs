//! Reading an encrypted repository's keyring (SPEC.md §14.1): the age file under
//! keys/recipients.age, and the keyring document inside it. Errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

use freezer::store::Store;

// A throwaway test identity (its key encrypts nothing real).
const IDENTITY: &str = "AGE-SECRET-KEY-1C2TWDKYRUKSCLG2K5LL6S37938RCESTACJ586UELKD8NDZS7EWPQ533C05";

fuzz_target!(|data: &[u8]| {
    // The document a keyring decrypts to.
    let _ = serde_json::from_slice::<freezer::crypto::Keys>(data);
    // The age file itself.
    let dir = tempfile::tempdir().unwrap();
    let store = freezer::store::LocalStore::new(dir.path().to_path_buf());
    store.put(freezer::crypto::RECIPIENTS_KEY, data).unwrap();
    let creds = freezer::crypto::Credentials {
        identities: vec![IDENTITY.to_string()],
        passphrase: None,
    };
    let _ = freezer::crypto::open_keyring(&store, &creds);
});
