//! `freezer init` and `freezer key`: creating a repository, and who can open an encrypted
//! one. The policy lives here: a repository always keeps a key that opens it, and a
//! removed key starts a new key epoch so it never sees what is written afterwards.

use serde::Serialize;

use crate::crypto::{Credentials, Keys};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::store::Store;

/// The keys of a new encrypted repository.
#[derive(Debug, Default)]
pub struct NewKeys {
    /// age recipients (age1…), already parsed.
    pub recipients: Vec<String>,
    /// Also opened by this passphrase.
    pub passphrase: Option<String>,
}

/// Creates a repository in `store`, encrypted to `keys` when given.
pub fn init(store: Box<dyn Store>, keys: Option<NewKeys>) -> Result<Repository> {
    let keys = match keys {
        None => None,
        Some(k) => {
            if k.recipients.is_empty() && k.passphrase.is_none() {
                return Err(Error::usage("--encrypt needs a key that can open the repository")
                    .with_hint("pass --recipient age1… (repeatable) or --recipients-file FILE, and/or set FREEZER_PASSPHRASE (or --passphrase-file FILE)"));
            }
            let mut keys = Keys::generate();
            keys.recipients = k.recipients;
            keys.passphrase = k.passphrase.is_some();
            Some((keys, k.passphrase))
        }
    };
    Repository::init_with(store, keys)
}

/// A change to who can open an encrypted repository.
#[derive(Debug)]
pub enum KeyChange {
    /// No change: report the keys.
    List,
    /// More recipients and/or a (new) passphrase.
    Add {
        recipients: Vec<String>,
        new_passphrase: Option<String>,
    },
    /// An age1… recipient, or `passphrase`.
    Remove(String),
}

/// Who can open the repository, after the change.
#[derive(Debug, Serialize)]
pub struct KeyReport {
    pub repo: String,
    pub recipients: Vec<String>,
    pub passphrase: bool,
    pub epoch: u32,
}

/// Applies `change` to an encrypted repository opened with `creds`. Data is never
/// uploaded again: only the keyring is rewritten.
pub fn change_keys(
    repo: &mut Repository,
    change: KeyChange,
    creds: &Credentials,
) -> Result<KeyReport> {
    let Some(keys) = repo.keys().cloned() else {
        return Err(Error::usage(format!(
            "repository {} is not encrypted",
            repo.location()
        )));
    };
    let mut keys = keys;
    match change {
        KeyChange::List => {}
        KeyChange::Add {
            recipients,
            new_passphrase,
        } => {
            if recipients.is_empty() && new_passphrase.is_none() {
                return Err(Error::usage("key add: nothing to add").with_hint(
                    "pass --recipient age1…, --recipients-file FILE or --new-passphrase-file FILE",
                ));
            }
            for r in recipients {
                if !keys.recipients.contains(&r) {
                    keys.recipients.push(r);
                }
            }
            keys.passphrase |= new_passphrase.is_some();
            let wrap = new_passphrase.or(creds.passphrase.clone());
            repo.set_keys(keys.clone(), wrap.as_deref())?;
        }
        KeyChange::Remove(key) => {
            if key == "passphrase" {
                if !keys.passphrase {
                    return Err(Error::usage("the repository has no passphrase"));
                }
                keys.passphrase = false;
            } else {
                let r = crate::crypto::parse_recipient(&key)?;
                let before = keys.recipients.len();
                keys.recipients.retain(|x| *x != r);
                if keys.recipients.len() == before {
                    return Err(Error::not_found(format!(
                        "recipient {r} does not open the repository"
                    )));
                }
            }
            if keys.recipients.is_empty() && !keys.passphrase {
                return Err(Error::usage(
                    "that is the last key: nobody could open the repository any more",
                )
                .with_hint("add another key first (freezer key add)"));
            }
            // What is written from now on uses a data key the removed key never saw.
            keys.rotate();
            repo.set_keys(keys.clone(), creds.passphrase.as_deref())?;
        }
    }
    Ok(KeyReport {
        repo: repo.location(),
        recipients: keys.recipients,
        passphrase: keys.passphrase,
        epoch: keys.epoch,
    })
}
