//! Backup health at a glance: run records, `freezer status` and `freezer report`, over a
//! month of nights played on a fake clock (`FREEZER_FAKE_NOW`, test builds only) against
//! Garage, with a real store outage, a failing hook, drills and a forget and prune.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use crate::faults::proxy::{Fault, FaultProxy};

const DAY: u64 = 86_400;

/// One repository on Garage reached through a fault proxy, three sites, a config file,
/// this machine's state directory, and a clock.
struct Month {
    repo: TestRepo,
    proxy: FaultProxy,
    config: PathBuf,
    state: PathBuf,
    start: u64,
    _work: tempfile::TempDir,
    dirs: Vec<PathBuf>,
}

const SITES: [&str; 3] = ["shop", "blog", "wiki"];

impl Month {
    fn new() -> Month {
        let work = tempfile::tempdir().unwrap();
        let repo = TestRepo::s3().init();
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
        let proxy = FaultProxy::start(endpoint.trim_start_matches("http://"));
        let mut dirs = Vec::new();
        for (i, site) in SITES.iter().enumerate() {
            let d = work.path().join(site);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("index.html"), format!("<h1>{site}</h1>")).unwrap();
            std::fs::write(d.join("data.bin"), noise(200_000, i as u64 + 1)).unwrap();
            dirs.push(d);
        }
        let config = work.path().join("freezer.toml");
        let state = work.path().join("state");
        // A month ago, at midnight.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let month = Month {
            repo,
            proxy,
            config,
            state,
            start: (now / DAY - 31) * DAY,
            _work: work,
            dirs,
        };
        month.write_config("");
        month
    }

    fn write_config(&self, extra: &str) {
        let mut text = String::new();
        for (site, dir) in SITES.iter().zip(&self.dirs) {
            text += &format!(
                "[sites.{site}]\npaths = [{:?}]\n",
                dir.display().to_string()
            );
            if *site == "wiki" {
                text += "expect = \"24h\"\n";
            }
        }
        std::fs::write(&self.config, format!("{extra}\n{text}")).unwrap();
    }

    /// The time of night `n`, at `minute` past midnight.
    fn at(&self, n: u64, minute: u64) -> u64 {
        self.start + n * DAY + minute * 60
    }

    /// Runs freezer at time `t` (seconds since the epoch) against the repository.
    fn run(&self, t: u64, args: &[&str]) -> Output {
        let mut all = vec!["--repo", &self.repo.url, "--config"];
        let config = self.config.display().to_string();
        all.push(&config);
        all.extend_from_slice(args);
        let endpoint = format!("http://{}", self.proxy.endpoint());
        let state = self.state.display().to_string();
        let t = t.to_string();
        freezer_env(
            &all,
            &[
                ("AWS_ENDPOINT_URL", &endpoint),
                ("FREEZER_RETRY_FOR", "2s"),
                ("FREEZER_STATE_DIR", &state),
                ("FREEZER_FAKE_NOW", &t),
            ],
        )
    }

    fn site_dir(&self, site: &str) -> &Path {
        &self.dirs[SITES.iter().position(|s| *s == site).unwrap()]
    }

    /// The run records' keys of `site`.
    fn runs(&self, site: &str) -> Vec<String> {
        let store = self.repo.store();
        let mut keys: Vec<String> = store
            .list(&format!("runs/{site}/"))
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        keys
    }
}

/// The rows of `freezer status`'s table: site → its columns.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .take_while(|l| !l.contains(": "))
        .map(|l| {
            // Columns are separated by runs of spaces; "LAST RUN" holds single spaces.
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// 30 nights of three sites: shop is frozen every night (the store is down on night 10)
/// and its drills pass; blog's freeze hook fails on night 20 and its last drill fails on
/// a damaged blob; wiki's cron stopped after night 26. Then `status`, as of the morning
/// of night 30, says shop OK, blog FAILING, wiki LATE, exits 11, and its JSON says
/// the same; every failed run has its record; the report renders in Chromium.
#[test]
fn a_month_of_nights_shows_one_site_ok_one_failing_one_late() {
    let m = Month::new();
    for n in 1..=30u64 {
        for (i, site) in SITES.iter().enumerate() {
            if *site == "wiki" && n > 26 {
                continue;
            }
            // Nightly at varying times: 01:00 to 04:59.
            let t = m.at(n, 60 + (n * 47 + i as u64 * 13) % 240);
            std::fs::write(m.site_dir(site).join("night.txt"), format!("{n}")).unwrap();
            let outage = *site == "shop" && n == 10;
            let failing_hook = *site == "blog" && n == 20;
            if outage {
                m.proxy.inject(Fault::Reset, None, 1_000_000);
            }
            if failing_hook {
                m.write_config(
                    "[sites.blog.hooks]\nbefore_freeze = \"echo maintenance failed >&2; exit 1\"",
                );
            }
            let out = m.run(t, &["freeze", site]);
            if outage {
                m.proxy.clear();
                assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
                // Nothing reached the repository; the record waits on this machine.
                assert!(!m.runs("shop").iter().any(|k| k.contains("-freeze-3-")));
            } else if failing_hook {
                m.write_config("");
                assert!(!out.status.success(), "{}", stderr(&out));
                assert!(
                    stderr(&out).contains("maintenance failed"),
                    "{}",
                    stderr(&out)
                );
            } else {
                assert_ok(&out);
            }
        }
        if n == 14 || n == 28 {
            assert_ok(&m.run(m.at(n, 300), &["drill", "shop"]));
        }
        if n == 25 {
            assert_ok(&m.run(m.at(n, 330), &["forget", "shop", "--keep-daily", "7"]));
            // Run records older than 20 days go with the prune.
            m.write_config("keep_runs = \"20d\"");
            let before = m.runs("shop").len();
            assert_ok(&m.run(m.at(n, 340), &["prune", "--grace", "0"]));
            let after = m.runs("shop");
            assert!(after.len() < before, "{before} → {}", after.len());
            let oldest = &after[0];
            let cutoff = freezer::format::compact_time(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.at(5, 340)),
            );
            assert!(
                oldest.as_str() >= format!("runs/shop/{cutoff}").as_str(),
                "{oldest}"
            );
            m.write_config("");
        }
    }
    // The last drill of blog meets a damaged layer: the one of its first freeze, which
    // holds data.bin (noise: only blog has it).
    let store = m.repo.store();
    let mut damaged = 0;
    for o in store.list("blobs/").unwrap() {
        if o.size > 100_000 && blob_belongs_to(&m, "blog", &o.key) {
            let mut d = store.get(&o.key).unwrap();
            let i = d.len() / 2;
            d[i] ^= 1;
            store.delete(&o.key).unwrap();
            store.put(&o.key, &d).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no layer of blog found");
    let out = m.run(m.at(30, 300), &["drill", "blog"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // Every failure has its record: the outage's (stored by the next night's run), the
    // hook's and the drill's.
    let shop = m.runs("shop");
    assert!(shop.iter().any(|k| k.contains("-freeze-3-")), "{shop:#?}");
    assert_eq!(shop.iter().filter(|k| k.contains("-drill-0-")).count(), 2);
    let blog = m.runs("blog");
    assert!(
        blog.iter()
            .any(|k| k.contains("-freeze-") && !k.contains("-freeze-0-")),
        "{blog:#?}"
    );
    assert!(blog.iter().any(|k| k.contains("-drill-4-")), "{blog:#?}");
    assert!(
        std::fs::read_dir(m.state.join("runs"))
            .unwrap()
            .flatten()
            .all(|d| { std::fs::read_dir(d.path()).unwrap().next().is_none() }),
        "a record still waits on this machine"
    );
    let record: serde_json::Value = serde_json::from_slice(
        &store
            .get(shop.iter().find(|k| k.contains("-freeze-3-")).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["error"]["kind"], "unreachable", "{record}");
    assert_eq!(record["site"], "shop");

    // The morning of night 30.
    let morning = m.at(30, 7 * 60);
    let out = m.run(morning, &["status"]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    let rows = table_rows(&text);
    let state = |site: &str| rows.iter().find(|r| r[0] == site).map(|r| r[1].clone());
    assert_eq!(state("shop").as_deref(), Some("OK"), "{text}");
    assert_eq!(state("blog").as_deref(), Some("FAILING"), "{text}");
    assert_eq!(state("wiki").as_deref(), Some("LATE"), "{text}");
    assert!(
        text.contains("blog: FAILING: last drill failed (exit 4)"),
        "{text}"
    );
    assert!(text.contains("wiki: LATE: newest snapshot is 4d"), "{text}");

    let out = m.run(morning, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(11));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sites = json["sites"].as_array().unwrap();
    assert_eq!(sites.len(), rows.len());
    for (row, s) in rows.iter().zip(sites) {
        assert_eq!(row[0], s["site"], "{row:?} {s}");
        assert_eq!(row[1], s["state"], "{row:?} {s}");
        let age = std::time::Duration::from_secs(s["newest"]["age_seconds"].as_u64().unwrap());
        assert_eq!(row[2], freezer::progress::duration(age), "{row:?} {s}");
        let last = &s["last_run"];
        let outcome = match last["exit"].as_i64().unwrap() {
            0 => "ok".to_string(),
            n => format!("failed ({n})"),
        };
        assert_eq!(
            row[4],
            format!("{} {outcome}", last["command"].as_str().unwrap())
        );
        assert!(
            text.contains(&format!(
                "{}: {}",
                s["site"].as_str().unwrap(),
                s["state"].as_str().unwrap()
            )) || s["state"] == "OK"
        );
    }
    let shop = sites.iter().find(|s| s["site"] == "shop").unwrap();
    assert_eq!(shop["last_good_drill"]["exit"], 0);
    assert_eq!(
        shop["snapshots"], 12,
        "7 kept by forget --keep-daily 7, 5 nights after: {shop}"
    );
    assert!(shop["dedup_ratio"].as_f64().unwrap() > 1.0, "{shop}");
    // One site asked alone: its own state decides.
    assert_eq!(m.run(morning, &["status", "shop"]).status.code(), Some(0));
    assert_eq!(m.run(morning, &["status", "wiki"]).status.code(), Some(10));

    report_renders_offline(&m, morning);
}

/// Whether blob `key` is referenced by a snapshot of `site` and by none of another.
fn blob_belongs_to(m: &Month, site: &str, key: &str) -> bool {
    let digest = key.trim_start_matches("blobs/sha256/");
    // Layers are named in the snapshots' tree manifests; read them from the store.
    let store = m.repo.store();
    let mut owners = std::collections::BTreeSet::new();
    for r in store.list("snapshots/").unwrap() {
        let record: serde_json::Value =
            serde_json::from_slice(&store.get(&r.key).unwrap()).unwrap();
        let owner = record["annotations"]["dev.freezer.site"]
            .as_str()
            .unwrap()
            .to_string();
        for m in record["manifests"].as_array().unwrap() {
            let d = m["digest"].as_str().unwrap().trim_start_matches("sha256:");
            let manifest: serde_json::Value =
                serde_json::from_slice(&store.get(&format!("blobs/sha256/{d}")).unwrap()).unwrap();
            let layers = manifest["layers"].as_array().unwrap();
            if layers
                .iter()
                .any(|l| l["digest"].as_str().unwrap().ends_with(digest))
            {
                owners.insert(owner.clone());
            }
        }
    }
    owners.len() == 1 && owners.contains(site)
}

/// `freezer report --html` in headless Chromium, at 1280×800 and 390×844 (and dark), with
/// no network:
/// the screenshots are saved under target/report/, the DOM names each site, its state
/// and its last drill, and Chromium's own network log shows no request but the file.
fn report_renders_offline(m: &Month, morning: u64) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report");
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    let out = m.run(morning, &["report", "--html", page.to_str().unwrap()]);
    assert_ok(&out);
    let html = std::fs::read_to_string(&page).unwrap();
    for needle in [
        "http://", "https://", "<script", "<link", "<img", "src=", "@import", "url(",
    ] {
        assert!(
            !html.contains(needle),
            "the page refers outside itself: {needle}"
        );
    }
    let url = format!("file://{}", page.display());
    let chromium = |extra: &[&str]| -> Output {
        // Its own network namespace: no interface but loopback, down.
        Command::new("unshare")
            .args([
                "--net",
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
            ])
            .args(["--hide-scrollbars", "--disable-background-networking"])
            .args(["--disable-component-update", "--no-first-run"])
            .args(extra)
            .arg(&url)
            .output()
            .expect("running chromium (installed by scripts/services)")
    };
    let netlog = dir.join("netlog.json");
    let out = chromium(&["--dump-dom", &format!("--log-net-log={}", netlog.display())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    for (site, state) in [("shop", "OK"), ("blog", "FAILING"), ("wiki", "LATE")] {
        let section = dom
            .split(&format!(r#"id="site-{site}""#))
            .nth(1)
            .unwrap_or_else(|| panic!("no section for {site}"));
        let section = section.split("</section>").next().unwrap();
        assert!(
            section.contains(&format!(r#"badge {state}">{state}"#)),
            "{site}: {section}"
        );
        assert!(section.contains("Latest drill"), "{site}");
    }
    assert!(
        dom.contains("PASSED") && dom.contains("FAILED"),
        "the drills are shown"
    );
    assert!(dom.contains("Repository growth"));
    // Chromium's network log: no request but its own update and clock checks (which it
    // makes whatever the page is), all failed in the empty network namespace.
    let log = std::fs::read_to_string(&netlog).unwrap();
    assert!(log.contains("report.html"), "the log is of this page");
    let own = ["googleapis.com", "clients2.google.com", "gvt1.com"];
    for scheme in ["\"http://", "\"https://", "\"ws://", "\"wss://"] {
        for (i, _) in log.match_indices(scheme) {
            let rest = &log[i + 1..];
            let url = &rest[..rest.find('"').unwrap_or(rest.len())];
            let host = url.split('/').nth(2).unwrap_or("");
            let host = host.split([' ', ':']).next().unwrap_or("");
            assert!(
                own.iter().any(|o| host.ends_with(o)),
                "the page asked the network for {url}"
            );
        }
    }
    // Light at a desk and on a phone, and dark (the page follows prefers-color-scheme).
    let dark = [
        "--force-dark-mode",
        "--blink-settings=preferredColorScheme=0",
    ];
    for (w, h, scheme) in [(1280, 800, ""), (390, 844, ""), (1280, 800, "-dark")] {
        let shot = dir.join(format!("report-{w}x{h}{scheme}.png"));
        let _ = std::fs::remove_file(&shot);
        let mut args = vec![
            format!("--screenshot={}", shot.display()),
            format!("--window-size={w},{h}"),
        ];
        if !scheme.is_empty() {
            args.extend(dark.map(String::from));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = chromium(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            shot.display()
        );
    }
}
