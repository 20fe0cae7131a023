//! `freezer report --html`: one self-contained page (inline CSS and SVG, no script, no
//! font, nothing fetched) that a person reads at a desk or on a phone, light or dark.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::format::{parse_compact_time, RunRecord};
use crate::ops::status::{History, SiteStatus, State, Status};
use crate::progress::{bytes, duration};

/// Width of the charts' coordinate system; they scale to the page.
const W: f64 = 900.0;

const STYLE: &str = r#"
:root{color-scheme:light dark;--bg:#fff;--card:#f6f7f9;--fg:#1d2330;--muted:#5b6475;--line:#d9dde5;
--ok:#1a7f37;--late:#a85400;--fail:#c62828;--snap:#2f6fde;--stored:#9db8ef;--added:#2f6fde;--grow:#2f6fde}
@media (prefers-color-scheme:dark){:root{--bg:#12151b;--card:#1a1f27;--fg:#e6e9ef;--muted:#9aa3b2;
--line:#2c323d;--ok:#4ac26b;--late:#f0a03c;--fail:#ff6b6b;--snap:#6ea2ff;--stored:#2f4a7d;--added:#6ea2ff;--grow:#6ea2ff}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1180px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:28px 0 8px}h3{font-size:15px;margin:16px 0 6px;color:var(--muted)}
p{margin:4px 0}.muted{color:var(--muted)}a{color:var(--snap)}
.summary{display:flex;gap:8px;flex-wrap:wrap;margin:12px 0}
.summary div{background:var(--card);border-radius:8px;padding:8px 14px;min-width:90px}
.summary b{display:block;font-size:22px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap;vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:13px}
td.num,th.num{text-align:right}
.badge{display:inline-block;border-radius:4px;padding:1px 7px;font-weight:700;font-size:12px;color:#fff}
.OK{background:var(--ok)}.LATE{background:var(--late)}.FAILING{background:var(--fail)}
.site{background:var(--card);border-radius:10px;padding:4px 16px 14px;margin-top:18px}
.site h2{margin-top:12px}
.reason{color:var(--muted);overflow-wrap:anywhere}
.chart{height:110px}.caption{display:flex;justify-content:space-between;font-size:12px;color:var(--muted)}
.axis{display:flex;justify-content:space-between;font-size:12px;color:var(--muted)}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:13px;color:var(--muted);margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:5px;vertical-align:-1px}
svg{width:100%;height:auto;display:block}
svg .snap{fill:var(--snap)}svg .fail{fill:var(--fail)}svg .pass{fill:var(--ok)}
svg .stored{fill:var(--stored)}svg .added{fill:var(--added)}svg .grid{stroke:var(--line);stroke-width:1}
svg .grow{fill:none;stroke:var(--grow);stroke-width:2;vector-effect:non-scaling-stroke}svg .growfill{fill:var(--stored);opacity:.5}
svg .grid{vector-effect:non-scaling-stroke}
svg text{fill:var(--muted);font-size:11px}
.checks td{white-space:normal;overflow-wrap:anywhere}.checks td:first-child{width:1%;white-space:nowrap}
@media (max-width:640px){main{padding:10px 10px 30px}h1{font-size:20px}.opt{display:none}
th,td{padding:5px 4px;font-size:13px;white-space:normal}.site{padding:2px 10px 10px}
.summary div{min-width:0;flex:1;padding:6px 10px}.summary b{font-size:18px}}
"#;

/// HTML text, escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The time an RFC 3339 text of freezer's names (to the second).
fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.get(..19)?;
    let compact: String = b
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    parse_compact_time(&format!("{compact}Z"))
}

/// What a run's exit says, in a word.
pub(super) fn outcome(exit: i32) -> String {
    match exit {
        0 => "ok".into(),
        n => format!("failed ({n})"),
    }
}

fn ago(now: SystemTime, t: SystemTime) -> String {
    duration(now.duration_since(t).unwrap_or_default())
}

/// The page.
pub fn html(st: &Status, history: &[History], days: u64) -> String {
    let now = parse_time(&st.now).unwrap_or_else(crate::sys::now);
    let window = Window { now, days };
    let mut out = String::new();
    let count = |s: State| st.sites.iter().filter(|x| x.state == s).count();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>freezer: backup health</title><style>{STYLE}</style></head><body><main>"#
    );
    let _ = write!(
        out,
        r#"<h1>Backup health</h1><p class="muted">{} · as of {} UTC · the last {days} days</p>"#,
        esc(&st.repository),
        esc(st.now.get(..16).unwrap_or(&st.now)).replace('T', " ")
    );
    let _ = write!(
        out,
        r#"<div class="summary"><div><b>{}</b>sites</div><div><b style="color:var(--ok)">{}</b>OK</div><div><b style="color:var(--late)">{}</b>late</div><div><b style="color:var(--fail)">{}</b>failing</div></div>"#,
        st.sites.len(),
        count(State::Ok),
        count(State::Late),
        count(State::Failing)
    );
    status_table(&mut out, st);
    let by_site: BTreeMap<&str, &History> = history.iter().map(|h| (h.site.as_str(), h)).collect();
    growth(&mut out, history, &window);
    for s in &st.sites {
        site_section(&mut out, s, by_site.get(s.site.as_str()).copied(), &window);
    }
    let _ = write!(
        out,
        r#"<p class="muted" style="margin-top:24px">Written by freezer {} from the repository's snapshot and run records.</p></main></body></html>"#,
        env!("CARGO_PKG_VERSION")
    );
    out
}

fn status_table(out: &mut String, st: &Status) {
    out.push_str(r#"<h2>Status</h2><div class="scroll"><table><thead><tr><th>Site</th><th>State</th><th>Age</th><th class="opt">Expected</th><th>Last run</th><th>Last good drill</th><th class="num opt">Stored</th><th class="num opt">Added</th><th class="num opt">Dedup</th></tr></thead><tbody>"#);
    for s in &st.sites {
        let newest = s.newest.as_ref().map_or("none".into(), |n| {
            format!("{} ago", duration(Duration::from_secs(n.age_seconds)))
        });
        let last = s.last_run.as_ref().map_or("none".into(), |r| {
            format!(
                "{} {}, {} ago",
                r.command,
                outcome(r.exit),
                duration(Duration::from_secs(r.age_seconds))
            )
        });
        let drill = s.last_good_drill.as_ref().map_or("never".into(), |d| {
            format!("{} ago", duration(Duration::from_secs(d.age_seconds)))
        });
        let _ = write!(
            out,
            r##"<tr><td><a href="#site-{0}">{0}</a></td><td><span class="badge {1}">{1}</span></td><td>{2}</td><td class="opt">{3}</td><td>{4}</td><td>{5}</td><td class="num opt">{6}</td><td class="num opt">{7}</td><td class="num opt">{8}</td></tr>"##,
            esc(&s.site),
            s.state.as_str(),
            newest,
            duration(Duration::from_secs(s.expect_seconds)),
            esc(&last),
            drill,
            s.stored_bytes.map_or("-".into(), bytes),
            s.added_last.map_or("-".into(), bytes),
            s.dedup_ratio.map_or("-".into(), |r| format!("{r:.1}x")),
        );
    }
    out.push_str("</tbody></table></div>");
}

/// The days a chart spans, ending now.
struct Window {
    now: SystemTime,
    days: u64,
}

impl Window {
    fn start(&self) -> SystemTime {
        self.now - Duration::from_secs(self.days * 86_400)
    }

    /// The x of time `t` (None: outside the window).
    fn x(&self, t: SystemTime) -> Option<f64> {
        let from = t.duration_since(self.start()).ok()?.as_secs_f64();
        let span = (self.days * 86_400) as f64;
        (from <= span).then(|| 10.0 + from / span * (W - 20.0))
    }

    /// The day of `t` in the window, 0 the oldest.
    fn day(&self, t: SystemTime) -> Option<usize> {
        let d = t.duration_since(self.start()).ok()?.as_secs() / 86_400;
        // The window's last instant (now) belongs to its last day.
        (t <= self.now).then_some(d.min(self.days.max(1) - 1) as usize)
    }

    /// Dates under a chart: its first, middle and last day.
    fn axis(&self, out: &mut String) {
        let date = |t: SystemTime| {
            let s = crate::format::rfc3339(t);
            s.get(..10).unwrap_or("").to_string()
        };
        let mid = self.start() + Duration::from_secs(self.days * 43_200);
        let _ = write!(
            out,
            r#"<div class="axis"><span>{}</span><span>{}</span><span>{}</span></div>"#,
            date(self.start()),
            date(mid),
            date(self.now)
        );
    }
}

fn ended(r: &RunRecord) -> Option<SystemTime> {
    parse_time(&r.ended)
}

/// The repository's growth over the window: what freezes added less what prunes
/// deleted, day by day, from the start of the window.
fn growth(out: &mut String, history: &[History], w: &Window) {
    let mut per_day = vec![0i128; w.days.max(1) as usize];
    for r in history.iter().flat_map(|h| &h.runs) {
        if let Some(d) = ended(r).and_then(|t| w.day(t)) {
            per_day[d] += i128::from(r.bytes.added) - i128::from(r.bytes.deleted);
        }
    }
    let mut total = 0i128;
    let cumulative: Vec<i128> = per_day
        .iter()
        .map(|d| {
            total += d;
            total
        })
        .collect();
    let (lo, hi) = cumulative
        .iter()
        .fold((0i128, 1i128), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let y = |v: i128| 100.0 - ((v - lo) as f64 / (hi - lo).max(1) as f64) * 85.0;
    let n = cumulative.len().max(2) as f64;
    let pts: Vec<String> = cumulative
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                10.0 + i as f64 / (n - 1.0) * (W - 20.0),
                y(*v)
            )
        })
        .collect();
    let _ = write!(
        out,
        r#"<h2>Repository growth</h2><p class="muted">{} added less deleted over the last {} days</p><div class="caption"><span>up to {}</span></div><svg class="chart" viewBox="0 0 {W} 110" preserveAspectRatio="none" role="img" aria-label="repository growth"><line class="grid" x1="10" x2="{}" y1="100" y2="100"/><polygon class="growfill" points="10,{:.1} {} {},{:.1}"/><polyline class="grow" points="{}"/></svg>"#,
        signed_bytes(total),
        w.days,
        signed_bytes(hi),
        W - 10.0,
        y(lo.max(0).min(hi)),
        pts.join(" "),
        W - 10.0,
        y(lo.max(0).min(hi)),
        pts.join(" "),
    );
    w.axis(out);
}

fn signed_bytes(v: i128) -> String {
    match v < 0 {
        true => format!("−{}", bytes(v.unsigned_abs() as u64)),
        false => bytes(v as u64),
    }
}

fn site_section(out: &mut String, s: &SiteStatus, h: Option<&History>, w: &Window) {
    let _ = write!(
        out,
        r#"<section class="site" id="site-{0}"><h2>{0} <span class="badge {1}">{1}</span></h2><p class="reason">{2}</p>"#,
        esc(&s.site),
        s.state.as_str(),
        esc(&s.reason)
    );
    if let Some(l) = &s.lock {
        let _ = write!(out, "<p class=\"reason\">Locked by {}</p>", esc(l));
    }
    let empty = History {
        site: s.site.clone(),
        snapshots: vec![],
        runs: vec![],
    };
    let h = h.unwrap_or(&empty);
    timeline(out, h, w);
    nightly_bytes(out, h, w);
    latest_drill(out, h, w);
    out.push_str("</section>");
}

/// Snapshots, failed runs and drills, one row each, over the window.
fn timeline(out: &mut String, h: &History, w: &Window) {
    let _ = write!(
        out,
        r#"<h3>Last {} days</h3><svg viewBox="0 0 {W} 78" role="img" aria-label="timeline of {}"><line class="grid" x1="10" x2="{}" y1="16" y2="16"/><line class="grid" x1="10" x2="{}" y1="40" y2="40"/><line class="grid" x1="10" x2="{}" y1="64" y2="64"/>"#,
        w.days,
        esc(&h.site),
        W - 10.0,
        W - 10.0,
        W - 10.0
    );
    for (id, created) in &h.snapshots {
        if let Some(x) = parse_time(created).and_then(|t| w.x(t)) {
            let _ = write!(
                out,
                r#"<circle class="snap" cx="{x:.1}" cy="16" r="4.5"><title>snapshot {}</title></circle>"#,
                esc(id)
            );
        }
    }
    for r in h
        .runs
        .iter()
        .filter(|r| r.exit != 0 && r.command != "drill")
    {
        if let Some(x) = ended(r).and_then(|t| w.x(t)) {
            let why = r.error.as_ref().map_or("", |e| e.message.as_str());
            let _ = write!(
                out,
                r#"<rect class="fail" x="{:.1}" y="35" width="10" height="10" transform="rotate(45 {x:.1} 40)"><title>{} failed (exit {}) {}: {}</title></rect>"#,
                x - 5.0,
                esc(&r.command),
                r.exit,
                esc(&r.ended),
                esc(why)
            );
        }
    }
    for r in h.runs.iter().filter(|r| r.command == "drill") {
        if let Some(x) = ended(r).and_then(|t| w.x(t)) {
            let (class, what) = match r.exit {
                0 => ("pass", "passed".to_string()),
                n => ("fail", format!("failed (exit {n})")),
            };
            let _ = write!(
                out,
                r#"<path class="{class}" d="M{x:.1} 57 l7 7 -7 7 -7 -7z"><title>drill {what} {}</title></path>"#,
                esc(&r.ended)
            );
        }
    }
    out.push_str("</svg>");
    w.axis(out);
    out.push_str(r#"<div class="legend"><span><i style="background:var(--snap)"></i>snapshot</span><span><i style="background:var(--fail);border-radius:2px"></i>failed run</span><span><i style="background:var(--ok)"></i>drill passed</span><span><i style="background:var(--fail)"></i>drill failed</span></div>"#);
}

/// Per night: what its freezes' snapshots hold (stored) and what they added.
fn nightly_bytes(out: &mut String, h: &History, w: &Window) {
    let mut stored = vec![0u64; w.days.max(1) as usize];
    let mut added = vec![0u64; w.days.max(1) as usize];
    for r in h
        .runs
        .iter()
        .filter(|r| r.command == "freeze" && r.exit == 0)
    {
        if let Some(d) = ended(r).and_then(|t| w.day(t)) {
            stored[d] += r.bytes.stored.max(r.bytes.added);
            added[d] += r.bytes.added;
        }
    }
    let bars = |out: &mut String, v: &[u64], class: &str, top: f64| {
        let max = v.iter().copied().max().unwrap_or(0).max(1) as f64;
        let step = (W - 20.0) / v.len() as f64;
        for (i, b) in v.iter().enumerate().filter(|(_, b)| **b > 0) {
            let hgt = (*b as f64 / max * 40.0).max(1.0);
            let _ = write!(
                out,
                r#"<rect class="{class}" x="{:.1}" y="{:.1}" width="{:.1}" height="{hgt:.1}"><title>{} {class}</title></rect>"#,
                10.0 + i as f64 * step,
                top + 40.0 - hgt,
                (step - 1.0).max(1.0),
                bytes(*b)
            );
        }
    };
    let chart = |out: &mut String, v: &[u64], class: &str, what: &str| {
        let max = v.iter().copied().max().unwrap_or(0);
        let _ = write!(
            out,
            r#"<div class="caption"><span>{what} per night, up to {}</span></div><svg class="chart" style="height:56px" viewBox="0 0 {W} 46" preserveAspectRatio="none" role="img" aria-label="{what} per night of {}">"#,
            bytes(max),
            esc(&h.site)
        );
        bars(out, v, class, 2.0);
        let _ = write!(
            out,
            r#"<line class="grid" x1="10" x2="{}" y1="42" y2="42"/></svg>"#,
            W - 10.0
        );
    };
    out.push_str("<h3>Stored and added per night</h3>");
    chart(out, &stored, "stored", "Stored");
    chart(out, &added, "added", "Added");
    w.axis(out);
}

/// The site's latest drill: its result, timings and checks.
fn latest_drill(out: &mut String, h: &History, w: &Window) {
    out.push_str("<h3>Latest drill</h3>");
    let Some(r) = h.runs.iter().rev().find(|r| r.command == "drill") else {
        out.push_str(r#"<p class="muted">No drill in this period.</p>"#);
        return;
    };
    let when = ended(r).map_or(String::new(), |t| format!("{} ago", ago(w.now, t)));
    let result = match r.exit {
        0 => r#"<span class="badge OK">PASSED</span>"#.to_string(),
        n => format!(r#"<span class="badge FAILING">FAILED</span> exit {n}"#),
    };
    let _ = write!(
        out,
        "<p>{result} · snapshot {} · {when}",
        esc(r.snapshot.as_deref().unwrap_or("?"))
    );
    if let Some(d) = &r.drill {
        let _ = write!(
            out,
            " · restore {:.1} s, drill {:.1} s</p>",
            d.restore_seconds, d.seconds
        );
        out.push_str(r#"<div class="scroll"><table class="checks"><tbody>"#);
        for c in &d.checks {
            let _ = write!(
                out,
                r#"<tr><td><span class="badge {}">{}</span></td><td>{}</td><td class="muted">{}</td></tr>"#,
                if c.ok { "OK" } else { "FAILING" },
                if c.ok { "ok" } else { "failed" },
                esc(&c.name),
                esc(&c.detail)
            );
        }
        out.push_str("</tbody></table></div>");
    } else {
        out.push_str("</p>");
    }
    // Said by a failed check already, or else here.
    let in_checks = r
        .drill
        .as_ref()
        .is_some_and(|d| d.checks.iter().any(|c| !c.ok));
    if let Some(e) = r.error.as_ref().filter(|_| !in_checks) {
        let _ = write!(out, r#"<p class="reason">{}</p>"#, esc(&e.message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_times_parse() {
        assert_eq!(esc(r#"<a href="x">&"#), "&lt;a href=&quot;x&quot;&gt;&amp;");
        let t = parse_time("2026-12-07T03:04:05.123456789Z").unwrap();
        assert_eq!(crate::format::compact_time(t), "20261207T030405Z");
        assert!(parse_time("nope").is_none());
    }
}
