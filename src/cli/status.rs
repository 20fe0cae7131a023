//! `freezer status` and `freezer report`: every site's backup health, as a table that a
//! monitoring check can run (its exit status says whether all is well) or as a page.

use std::time::Duration;

use super::args::{ReportArgs, StatusArgs};
use super::{print_json, Ctx};
use crate::error::{IoContext, Result};
use crate::ops::status::{self, Status, StatusRequest};
use crate::progress::{bytes, duration};

/// Reads every site's status as of now.
fn read_status(ctx: &Ctx, sites: &[String]) -> Result<(crate::repo::Repository, Status)> {
    for s in sites {
        crate::repo::check_site_name(s)?;
    }
    let repo = ctx.open_repo()?;
    let req = StatusRequest {
        sites: sites.to_vec(),
        configured: ctx.settings.configured_sites(),
        expect: ctx.settings.expectations()?,
        default_expect: status::DEFAULT_EXPECT,
        now: crate::sys::now(),
    };
    let st = status::status(&repo, &req)?;
    Ok((repo, st))
}

pub fn status(ctx: &Ctx, a: StatusArgs) -> Result<i32> {
    let (_, st) = read_status(ctx, &a.sites)?;
    if ctx.json() {
        print_json(&st);
    } else {
        outln!("{}", table(&st).trim_end());
    }
    Ok(st.exit_code())
}

/// "2d4h ago", or "never".
fn ago(s: Option<u64>) -> String {
    match s {
        Some(s) => format!("{} ago", duration(Duration::from_secs(s))),
        None => "never".into(),
    }
}

/// The text `freezer status` prints: a row per site, then why each one that is not OK
/// is not, and the locks held.
pub(super) fn table(st: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    w!(
        out,
        "{:<20} {:<8} {:>8} {:>6}  {:<22} {:<14} {:>10} {:>10} {:>6}",
        "SITE",
        "STATE",
        "AGE",
        "EXPECT",
        "LAST RUN",
        "GOOD DRILL",
        "STORED",
        "ADDED",
        "DEDUP"
    );
    for s in &st.sites {
        let last = s.last_run.as_ref().map_or("none".into(), |r| {
            format!("{} {}", r.command, super::report::outcome(r.exit))
        });
        w!(
            out,
            "{:<20} {:<8} {:>8} {:>6}  {:<22} {:<14} {:>10} {:>10} {:>6}",
            s.site,
            s.state.as_str(),
            s.newest.as_ref().map_or("none".into(), |n| {
                duration(Duration::from_secs(n.age_seconds))
            }),
            duration(Duration::from_secs(s.expect_seconds)),
            last,
            ago(s.last_good_drill.as_ref().map(|d| d.age_seconds)),
            s.stored_bytes.map_or("-".into(), bytes),
            s.added_last.map_or("-".into(), bytes),
            s.dedup_ratio.map_or("-".into(), |r| format!("{r:.1}x")),
        );
    }
    for s in st.sites.iter().filter(|s| s.state != status::State::Ok) {
        w!(out, "{}: {}: {}", s.site, s.state.as_str(), s.reason);
    }
    for s in &st.sites {
        if let Some(l) = &s.lock {
            w!(out, "{}: locked by {l}", s.site);
        }
    }
    out
}

pub fn report(ctx: &Ctx, a: ReportArgs) -> Result<i32> {
    let (repo, st) = read_status(ctx, &a.sites)?;
    let since = crate::sys::now() - Duration::from_secs(a.days * 86_400);
    let history = status::history(&repo, &st, since)?;
    let page = super::report::html(&st, &history, a.days);
    std::fs::write(&a.html, page).ctx(|| format!("writing {}", a.html.display()))?;
    ctx.say(format!(
        "wrote {} ({} sites, {} days)",
        a.html.display(),
        st.sites.len(),
        a.days
    ));
    Ok(0)
}
