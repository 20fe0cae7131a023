//! `freezer init` and `freezer key`.

use super::args::{InitArgs, KeyAction, KeyArgs};
use super::{print_json, Ctx};
use crate::error::Result;
use crate::ops::{self, KeyChange, KeyReport, NewKeys};
use crate::settings;

pub fn init(ctx: &Ctx, a: InitArgs) -> Result<i32> {
    let keys = if a.encrypt {
        Some(NewKeys {
            recipients: settings::recipients(&a.recipients, a.recipients_file.as_deref())?,
            passphrase: ctx.credentials()?.passphrase,
        })
    } else {
        None
    };
    let repo = ops::init(ctx.settings.store()?, keys)?;
    if ctx.json() {
        print_json(&serde_json::json!({
            "repo": repo.location(),
            "id": repo.config.id,
            "version": repo.config.version,
        }));
    } else {
        ctx.say(format!(
            "freezer: initialized repository {}",
            repo.location()
        ));
    }
    Ok(0)
}

pub fn key(ctx: &Ctx, a: KeyArgs) -> Result<i32> {
    let mut repo = ctx.open_repo()?;
    let listing = matches!(a.action, KeyAction::List);
    let change = match a.action {
        KeyAction::List => KeyChange::List,
        KeyAction::Add(k) => KeyChange::Add {
            recipients: settings::recipients(&k.recipients, k.recipients_file.as_deref())?,
            new_passphrase: settings::secret(
                k.new_passphrase_file.as_deref(),
                "FREEZER_NEW_PASSPHRASE",
            )?,
        },
        KeyAction::Remove(k) => KeyChange::Remove(k.key),
    };
    let report = ops::change_keys(&mut repo, change, &ctx.credentials()?)?;
    if ctx.json() {
        print_json(&report);
    } else if listing || !ctx.global.quiet {
        show(&report);
    }
    Ok(0)
}

fn show(r: &KeyReport) {
    outln!("repository {} (key epoch {})", r.repo, r.epoch);
    for k in &r.recipients {
        outln!("  recipient  {k}");
    }
    if r.passphrase {
        outln!("  passphrase");
    }
}
