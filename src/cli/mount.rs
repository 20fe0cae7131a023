//! `freezer mount`.

use super::args::MountArgs;
use super::Ctx;
use crate::error::Result;
use crate::ops::mount;

pub fn run(ctx: &Ctx, a: MountArgs) -> Result<i32> {
    let mountpoint = mount::check_mountpoint(&a.mountpoint)?;
    let repo = ctx.open_repo()?;
    let location = repo.location();
    let opts = mount::MountOptions {
        cache_bytes: a.cache_size,
    };
    mount::mount(repo, &mountpoint, opts, &ctx.cancel, |sites| {
        ctx.say(format!(
            "mounted {location} at {} ({sites} sites), read-only; Ctrl-C unmounts",
            mountpoint.display()
        ))
    })?;
    ctx.say(format!("unmounted {}", mountpoint.display()));
    Ok(0)
}
