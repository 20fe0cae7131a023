//! `freezer export`.

use super::args::{split_target, ExportArgs};
use super::{print_json, Ctx};
use crate::error::Result;
use crate::ops;
use crate::progress::bytes;

pub fn run(ctx: &Ctx, a: ExportArgs) -> Result<i32> {
    let (site, snap) = split_target(&a.target);
    let repo = ctx.open_repo()?;
    let report = ops::export(&repo, site, snap, &a.oci, a.compression.into())?;
    if ctx.json() {
        print_json(&report);
        return Ok(0);
    }
    if ctx.global.quiet {
        return Ok(0);
    }
    ctx.say(format!(
        "exported {}:{} to {} ({} blobs, {}); images: {}",
        report.site,
        report.snapshot,
        report.dir.display(),
        report.blobs,
        bytes(report.bytes),
        report.refs.join(", ")
    ));
    if report.decrypted {
        ctx.say(format!(
            "  decrypted: the repository is encrypted, {} is plaintext; keep it where only trusted people can read it",
            report.dir.display()
        ));
    }
    for r in &report.refs {
        outln!("oci:{}:{r}", report.dir.display());
    }
    Ok(0)
}
