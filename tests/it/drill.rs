//! Restore drills (`freezer drill`): a good snapshot passes; damage and data that no
//! longer match fail with the reason in the JSON; the live site is never touched and
//! nothing is left behind.

use std::fs;

use crate::common::*;
use crate::hydrated::*;

/// Runs a drill; returns its exit code and JSON report (the last stdout line).
fn drill(host: &str, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = freezer_on(host, args);
    (out.status.code(), result_line(&out.stdout))
}

#[test]
fn a_drill_passes_on_a_good_snapshot_and_fails_on_damage() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let dir = repo.local.clone().unwrap();
    let name = unique("dl");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    let password = format!("pw{}", unique("d"));
    add_shop_database(&site, &password);
    let id = json(&freeze_dehydrated(&a, &name, &repo, &["--json"]))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let target = format!("{name}:{id}");

    // A good snapshot passes: restored under a scratch name, database verified,
    // containers running, the probe served the page from inside the copy.
    let (code, report) = drill(
        &a,
        &[
            "drill",
            &target,
            "--repo",
            &repo.url,
            "--json",
            "--probe",
            "web=wget -qO- http://localhost/index.html",
        ],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    let find = |prefix: &str| {
        checks
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no check {prefix}: {report}"))
            .clone()
    };
    assert_eq!(find("database shop")["ok"], true);
    assert_eq!(find("probe web")["ok"], true);
    assert!(
        find("probe web")["detail"]
            .as_str()
            .unwrap()
            .contains(&name),
        "{report}"
    );
    let containers: Vec<_> = checks
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("container "))
        .collect();
    assert_eq!(containers.len(), 3, "web, data, db were running: {report}");
    assert!(report["restore_seconds"].as_f64().unwrap() > 0.0);
    let scratch = report["target"].as_str().unwrap().to_string();
    assert_ne!(scratch, name);
    assert_gone(&a, &scratch);
    // The live site was never touched.
    assert_eq!(http_get(port, "/index.html"), site.marker());
    assert_eq!(state(&a, &site.c("web")), "running");

    // A probe that fails fails the drill, and says which check.
    let (code, report) = drill(
        &a,
        &[
            "drill",
            &target,
            "--repo",
            &repo.url,
            "--json",
            "--probe",
            "web=wget -qO- http://localhost/missing.html",
        ],
    );
    assert_eq!(code, Some(4), "{report}");
    assert_eq!(report["ok"], false);
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        vec!["probe web: wget -qO- http://localhost/missing.html"]
    );
    assert_gone(&a, report["target"].as_str().unwrap());

    // A damaged blob: the restore fails, the JSON names the object.
    let record = read_json(&dir.join(format!("snapshots/{name}/{id}.json")));
    let www = record["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["dev.freezer.tree.name"] == format!("volume.{name}_www"))
        .unwrap()
        .clone();
    let manifest = read_json(&blob(&dir, www["digest"].as_str().unwrap()));
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = blob(&dir, &layer);
    let original = fs::read(&path).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&path, &bad).unwrap();
    let (code, report) = drill(&a, &["drill", &target, "--repo", &repo.url, "--json"]);
    assert_eq!(code, Some(4), "{report}");
    assert_eq!(report["ok"], false);
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(layer.trim_start_matches("sha256:")),
        "{report}"
    );
    assert_gone(&a, report["target"].as_str().unwrap());
    fs::write(&path, &original).unwrap();

    // A database whose checksum no longer matches what the snapshot recorded.
    let (forged, _) = forge_table_checksum(&dir, &name, &id);
    let (code, report) = drill(
        &a,
        &[
            "drill",
            &format!("{name}:{forged}"),
            "--repo",
            &repo.url,
            "--json",
        ],
    );
    assert_eq!(code, Some(4), "{report}");
    assert_eq!(report["ok"], false);
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{report}"
    );
    assert_gone(&a, report["target"].as_str().unwrap());
    assert_eq!(http_get(port, "/index.html"), site.marker());
}

/// A site of directories and a database on a server: the drill restores the trees into
/// a temporary directory and the database into a scratch database it drops afterwards.
#[test]
fn a_drill_of_files_and_a_database_uses_scratch_databases() {
    services();
    let server = std::env::var("FREEZER_TEST_MYSQL_URL").expect("set by scripts/services");
    let db = unique("drilldb").replace('-', "_");
    let admin = |sql: &str| {
        let out = std::process::Command::new("mariadb")
            .args(["--protocol=socket", "-N", "-B", "-e", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    admin(&format!(
        "CREATE DATABASE {db}; CREATE TABLE {db}.t (id INT PRIMARY KEY, v TEXT); INSERT INTO {db}.t VALUES (1,'a'),(2,'b')"
    ));
    let files = tempfile::tempdir().unwrap();
    fs::write(files.path().join("page.html"), b"hello").unwrap();
    let repo = TestRepo::local().init();
    let site = unique("fd");
    let out = freezer(&[
        "freeze",
        &site,
        "--repo",
        &repo.url,
        "--path",
        files.path().to_str().unwrap(),
        "--db",
        &format!("{server}/{db}"),
    ]);
    assert_ok(&out);
    // Without a server for the scratch database the drill says what it needs.
    let out = freezer(&["drill", &site, "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--db"), "{}", stderr(&out));

    let out = freezer(&[
        "drill",
        &site,
        "--repo",
        &repo.url,
        "--db",
        &format!("{server}/drill"),
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(report["ok"], true, "{report}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&format!("database {db}").as_str()),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("tree ")), "{names:?}");
    // The scratch database is gone; the source is untouched.
    let left = admin("SHOW DATABASES LIKE 'drill\\_%'");
    assert!(!left.contains(&db), "scratch databases left: {left}");
    assert_eq!(admin(&format!("SELECT COUNT(*) FROM {db}.t")), "2");
    admin(&format!("DROP DATABASE {db}"));
}

/// Ctrl-C (or SIGTERM) while a drill's copy is up removes the copy: nothing of it is left.
#[test]
fn an_interrupted_drill_removes_its_copy() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("di");
    let site = start_site(&a, &name, &image(), free_port());
    assert_ok(&freezer_on(&a, &["freeze", &name, "--repo", &repo.url]));
    for signal in ["INT", "TERM"] {
        let child = spawn_freezer(
            &[
                "drill",
                &name,
                "--repo",
                &repo.url,
                "--probe",
                "web=touch /www/probing; sleep 120",
            ],
            &[("DOCKER_HOST", &a)],
        );
        // The probe runs in the copy: its web container has the marker file.
        let copy = format!("drill-{name}-");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let names = docker(
                &a,
                &[
                    "ps",
                    "--format",
                    "{{.Names}}",
                    "--filter",
                    &format!("name={copy}"),
                ],
            );
            if let Some(web) = names.lines().find(|n| n.ends_with("-web-1")) {
                if docker_try(&a, &["exec", web, "test", "-e", "/www/probing"])
                    .status
                    .success()
                {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the drill's probe never ran"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let st = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("removed the copy"),
            "{}",
            stderr(&out)
        );
        assert_eq!(
            docker(&a, &["ps", "-aq", "--filter", &format!("name={copy}")]),
            ""
        );
        let volumes = docker(&a, &["volume", "ls", "-q"]);
        assert!(!volumes.contains(&copy), "{volumes}");
        let networks = docker(&a, &["network", "ls", "--format", "{{.Name}}"]);
        assert!(!networks.contains(&copy), "{networks}");
    }
    drop(site);
}
