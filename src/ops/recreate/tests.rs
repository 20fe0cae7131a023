//! Planning and recreating sites on the in-memory engine: what is created, in which
//! order, what a failure leaves (nothing), and what the options change.

use super::{apply, plan, SiteOptions, SitePlan};
use crate::docker::fake::FakeEngine;
use crate::docker::ContainerEngine;
use crate::error::ErrorKind;
use crate::ops::testkit::{depending_on, failed, service, with_volume, Kit};
use crate::ops::Action;
use crate::progress::Progress;
use crate::repo::Snapshot;

const WEB: &str = "shop/web:1";
const DB: &str = "mariadb:11";

/// A shop: web with its uploads, db with its data, on the project's network.
fn shop(kit: &Kit) -> Snapshot {
    let web = with_volume(service("shop", "web", WEB), "shop_www", "/var/www/uploads");
    let db = with_volume(service("shop", "db", DB), "shop_db", "/var/lib/mysql");
    let web = depending_on(web, "db", "service_started");
    kit.freeze(
        "shop",
        &[web, db],
        &[
            ("volume.shop_www", "cat.jpg", "a cat"),
            ("volume.shop_www", "2026/12/dog.jpg", "a dog"),
            ("volume.shop_db", "ibdata1", "rows"),
        ],
    )
}

fn plan_of(kit: &Kit, snap: Snapshot, opts: &SiteOptions) -> crate::error::Result<SitePlan> {
    plan::plan(&kit.repo, &kit.engine, snap, opts)
}

fn thaw(kit: &Kit, opts: &SiteOptions) -> crate::error::Result<apply::SiteReport> {
    let snap = kit.repo.find_snapshot("shop", None)?;
    let plan = plan_of(kit, snap, opts)?;
    apply::execute(&kit.repo, &kit.engine, plan, &Progress::default(), || {
        Ok("safety".into())
    })
}

/// The calls that changed the engine, in order (inspections left out).
fn changes(engine: &FakeEngine) -> Vec<String> {
    let st = engine.state();
    st.calls
        .iter()
        .filter(|c| {
            [
                "create_", "remove_", "start_", "stop_", "pause_", "connect_", "load_",
            ]
            .iter()
            .any(|p| c.starts_with(p))
        })
        .cloned()
        .collect()
}

fn nothing_left(engine: &FakeEngine) {
    let st = engine.state();
    assert!(
        st.containers.is_empty(),
        "containers left: {:?}",
        st.containers.keys()
    );
    assert!(
        st.volumes.is_empty(),
        "volumes left: {:?}",
        st.volumes.keys()
    );
    assert!(st.networks.is_empty(), "networks left: {:?}", st.networks);
}

#[test]
fn a_plan_lists_what_a_new_engine_needs_and_changes_nothing() {
    let kit = Kit::new(&[WEB, DB]);
    let plan = plan_of(&kit, shop(&kit), &SiteOptions::default()).unwrap();
    let steps = |s: &[super::Step]| -> Vec<(String, Action)> {
        s.iter().map(|s| (s.name.clone(), s.action)).collect()
    };
    assert_eq!(
        steps(&plan.networks),
        [("shop_default".into(), Action::Create)]
    );
    assert_eq!(
        steps(&plan.volumes),
        [
            ("shop_www".into(), Action::Create),
            ("shop_db".into(), Action::Create)
        ]
    );
    let images: Vec<_> = plan
        .images
        .iter()
        .map(|i| (i.image.as_str(), i.action))
        .collect();
    assert_eq!(images, [(WEB, Action::Present), (DB, Action::Present)]);
    assert!(plan.replaces.is_empty());
    assert_eq!(changes(&kit.engine), Vec::<String>::new());
}

#[test]
fn a_site_is_recreated_in_dependency_order_with_its_volumes_filled() {
    let kit = Kit::new(&[WEB, DB]);
    shop(&kit);
    thaw(&kit, &SiteOptions::default()).unwrap();
    // db first: web depends on it.
    assert_eq!(
        changes(&kit.engine),
        [
            "create_network shop_default",
            "create_volume shop_www",
            "create_volume shop_db",
            "create_container shop-db-1",
            "create_container shop-web-1",
            "start_container shop-db-1",
            "start_container shop-web-1",
        ]
    );
    let www = kit.volume("shop_www");
    assert_eq!(
        std::fs::read_to_string(www.join("cat.jpg")).unwrap(),
        "a cat"
    );
    assert_eq!(
        std::fs::read_to_string(www.join("2026/12/dog.jpg")).unwrap(),
        "a dog"
    );
    assert_eq!(
        std::fs::read_to_string(kit.volume("shop_db").join("ibdata1")).unwrap(),
        "rows"
    );
    let st = kit.engine.state();
    let web = &st.containers["shop-web-1"];
    assert!(web.facts.running);
    // The create body mounts the volume where the container had it.
    assert_eq!(web.facts.mounts[0].0, "/var/www/uploads");
    assert_eq!(web.body["Labels"]["com.docker.compose.project"], "shop");
}

#[test]
fn a_thaw_that_fails_at_the_last_step_removes_everything_it_created() {
    let kit = Kit::new(&[WEB, DB]);
    shop(&kit);
    kit.engine.fail("start_container shop-web-1");
    let err = failed(thaw(&kit, &SiteOptions::default()));
    assert!(err.message.contains("start_container shop-web-1"), "{err}");
    nothing_left(&kit.engine);
}

#[test]
fn a_thaw_that_fails_creating_a_container_removes_the_volumes_and_network() {
    let kit = Kit::new(&[WEB, DB]);
    shop(&kit);
    kit.engine.fail("create_container shop-web-1");
    failed(thaw(&kit, &SiteOptions::default()));
    nothing_left(&kit.engine);
    assert!(changes(&kit.engine).contains(&"remove_network shop_default".to_string()));
}

#[test]
fn a_network_the_engine_had_is_used_and_kept_when_the_thaw_fails() {
    let kit = Kit::new(&[WEB, DB]);
    kit.engine.add_network("shop_default");
    let plan = plan_of(&kit, shop(&kit), &SiteOptions::default()).unwrap();
    assert_eq!(plan.networks[0].action, Action::Reuse);
    kit.engine.fail("start_container shop-db-1");
    failed(thaw(&kit, &SiteOptions::default()));
    let st = kit.engine.state();
    assert!(st.networks.contains("shop_default"));
    assert!(st.containers.is_empty() && st.volumes.is_empty());
}

#[test]
fn an_empty_volume_the_engine_had_is_filled_and_kept() {
    let kit = Kit::new(&[WEB, DB]);
    kit.engine.add_volume("shop_www");
    let plan = plan_of(&kit, shop(&kit), &SiteOptions::default()).unwrap();
    let www = plan.volumes.iter().find(|v| v.name == "shop_www").unwrap();
    assert_eq!(www.action, Action::Reuse);
    thaw(&kit, &SiteOptions::default()).unwrap();
    assert_eq!(
        std::fs::read_to_string(kit.volume("shop_www").join("cat.jpg")).unwrap(),
        "a cat"
    );
}

#[test]
fn a_volume_with_data_in_it_is_refused_and_nothing_is_created() {
    let kit = Kit::new(&[WEB, DB]);
    std::fs::write(
        kit.engine.add_volume("shop_db").join("ibdata1"),
        "other rows",
    )
    .unwrap();
    let err = failed(plan_of(&kit, shop(&kit), &SiteOptions::default()));
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.message.contains("shop_db"), "{err}");
    assert_eq!(changes(&kit.engine), Vec::<String>::new());
}

#[test]
fn a_name_taken_by_a_container_outside_the_site_is_refused() {
    let kit = Kit::new(&[WEB, DB]);
    kit.engine
        .create_container("shop-web-1", &serde_json::json!({"Image": WEB}))
        .unwrap();
    let err = failed(plan_of(&kit, shop(&kit), &SiteOptions::default()));
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.message.contains("shop-web-1"), "{err}");
}

#[test]
fn a_site_that_exists_is_refused_without_replace() {
    let kit = Kit::new(&[WEB, DB]);
    shop(&kit);
    thaw(&kit, &SiteOptions::default()).unwrap();
    let err = failed(thaw(&kit, &SiteOptions::default()));
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.message.contains("site shop exists"), "{err}");
}

#[test]
fn replace_freezes_first_then_removes_the_old_containers() {
    let kit = Kit::new(&[WEB, DB]);
    shop(&kit);
    thaw(&kit, &SiteOptions::default()).unwrap();
    std::fs::write(kit.volume("shop_www").join("cat.jpg"), "changed").unwrap();
    let opts = SiteOptions {
        replace: true,
        ..Default::default()
    };
    let report = thaw(&kit, &opts).unwrap();
    assert_eq!(report.safety_snapshot.as_deref(), Some("safety"));
    assert_eq!(
        std::fs::read_to_string(kit.volume("shop_www").join("cat.jpg")).unwrap(),
        "a cat"
    );
    assert_eq!(kit.engine.state().containers.len(), 2);
}

#[test]
fn as_renames_containers_volumes_networks_and_the_project() {
    let kit = Kit::new(&[WEB, DB]);
    shop(&kit);
    let opts = SiteOptions {
        rename: Some("shop2".into()),
        ..Default::default()
    };
    let mut report = thaw(&kit, &opts).unwrap();
    report.containers.sort();
    assert_eq!(report.containers, ["shop2-db-1", "shop2-web-1"]);
    let st = kit.engine.state();
    assert!(st.networks.contains("shop2_default"));
    assert!(st.volumes.contains_key("shop2_www") && st.volumes.contains_key("shop2_db"));
    let web = &st.containers["shop2-web-1"];
    assert_eq!(web.body["Labels"]["com.docker.compose.project"], "shop2");
    assert_eq!(web.networks, ["shop2_default"]);
}

#[test]
fn images_the_engine_lacks_and_the_snapshot_does_not_hold_are_named() {
    let kit = Kit::new(&[DB]);
    let err = failed(plan_of(&kit, shop(&kit), &SiteOptions::default()));
    assert!(err.message.contains("services web"), "{err}");
    assert!(
        err.hint.as_deref().unwrap_or("").contains("--with-images"),
        "{err:?}"
    );
    assert_eq!(changes(&kit.engine), Vec::<String>::new());
}

#[test]
fn a_paused_container_comes_back_paused_and_an_exited_one_is_not_started() {
    let kit = Kit::new(&[WEB, DB]);
    let mut web = service("shop", "web", WEB);
    web.state = "paused".into();
    let mut job = service("shop", "job", DB);
    job.state = "exited".into();
    kit.freeze("shop", &[web, job], &[]);
    thaw(&kit, &SiteOptions::default()).unwrap();
    let calls = changes(&kit.engine);
    assert!(
        calls.contains(&"pause_container shop-web-1".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.contains(&"start_container shop-job-1".to_string()),
        "{calls:?}"
    );
    assert_eq!(
        kit.engine.state().containers["shop-web-1"].facts.status,
        "paused"
    );
}

#[test]
fn a_one_shot_that_fails_stops_the_thaw_before_what_depends_on_it_starts() {
    let kit = Kit::new(&[WEB, DB]);
    let migrate = service("shop", "migrate", WEB);
    let web = depending_on(
        service("shop", "web", WEB),
        "migrate",
        "service_completed_successfully",
    );
    kit.freeze("shop", &[web, migrate], &[]);
    kit.engine.exit_on_start("shop-migrate-1", 3);
    let err = failed(thaw(&kit, &SiteOptions::default()));
    assert!(err.message.contains("exited with status 3"), "{err}");
    assert!(err.message.contains("(the log of shop-migrate-1)"), "{err}");
    assert!(!changes(&kit.engine).contains(&"start_container shop-web-1".to_string()));
    nothing_left(&kit.engine);
}

#[test]
fn an_unhealthy_dependency_stops_the_thaw_and_says_where_to_look() {
    let kit = Kit::new(&[WEB, DB]);
    let db = service("shop", "db", DB);
    let web = depending_on(service("shop", "web", WEB), "db", "service_healthy");
    kit.freeze("shop", &[web, db], &[]);
    kit.engine.health_on_start("shop-db-1", "unhealthy");
    let err = failed(thaw(&kit, &SiteOptions::default()));
    assert!(err.message.contains("shop-db-1 is unhealthy"), "{err}");
    // The container is removed with the rest, so its last check is in the message.
    assert!(err.message.contains("the check says unhealthy"), "{err}");
    nothing_left(&kit.engine);
}

#[test]
fn only_thaws_the_containers_named_and_what_they_mount() {
    let kit = Kit::new(&[WEB, DB]);
    shop(&kit);
    let opts = SiteOptions {
        only: Some(vec!["shop-db-1".into()]),
        ..Default::default()
    };
    let report = thaw(&kit, &opts).unwrap();
    assert_eq!(report.containers, ["shop-db-1"]);
    let st = kit.engine.state();
    assert!(!st.volumes.contains_key("shop_www"));
}

#[test]
fn image_moves_a_service_to_another_image_on_the_engine() {
    let kit = Kit::new(&[WEB, DB, "shop/web:2"]);
    shop(&kit);
    let opts = SiteOptions {
        images: vec![("web".into(), "shop/web:2".into())],
        ..Default::default()
    };
    thaw(&kit, &opts).unwrap();
    assert_eq!(
        kit.engine.state().containers["shop-web-1"].body["Image"],
        "shop/web:2"
    );
}

#[test]
fn image_naming_an_image_the_engine_lacks_is_refused_with_what_to_do() {
    let kit = Kit::new(&[WEB, DB]);
    let opts = SiteOptions {
        images: vec![("web".into(), "shop/web:2".into())],
        ..Default::default()
    };
    let err = failed(plan_of(&kit, shop(&kit), &opts));
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(
        err.hint
            .as_deref()
            .unwrap_or("")
            .contains("docker pull shop/web:2"),
        "{err:?}"
    );
}

#[test]
fn an_engine_that_does_not_answer_is_named_before_anything_is_read() {
    let kit = Kit::new(&[WEB, DB]);
    let snap = shop(&kit);
    kit.engine.fail("info");
    let err = failed(plan_of(&kit, snap, &SiteOptions::default()));
    assert!(err.message.contains("info"), "{err}");
    assert_eq!(changes(&kit.engine), Vec::<String>::new());
}

/// A port of this host nothing listens on (bound and let go).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn publishing(port: u16) -> crate::docker::capture::ContainerSpec {
    let mut web = service("shop", "web", WEB);
    web.host_config["PortBindings"] = serde_json::json!({
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": port.to_string()}]
    });
    web
}

#[test]
fn publish_moves_a_published_port() {
    let kit = Kit::new(&[WEB]);
    let (from, to) = (free_port(), free_port());
    kit.freeze("shop", &[publishing(from)], &[]);
    let opts = SiteOptions {
        publish: vec![(from.to_string(), to.to_string())],
        ..Default::default()
    };
    thaw(&kit, &opts).unwrap();
    let st = kit.engine.state();
    let body = &st.containers["shop-web-1"].body;
    assert_eq!(
        body["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
        to.to_string()
    );
}

#[test]
fn a_published_port_in_use_is_refused_with_publish_as_the_way_out() {
    let kit = Kit::new(&[WEB]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    kit.freeze("shop", &[publishing(port)], &[]);
    let err = failed(thaw(&kit, &SiteOptions::default()));
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.message.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(
        err.hint.as_deref().unwrap_or("").contains("--publish"),
        "{err:?}"
    );
    assert_eq!(changes(&kit.engine), Vec::<String>::new());
}

#[test]
fn an_isolated_copy_publishes_nothing_and_never_restarts() {
    let kit = Kit::new(&[WEB]);
    let mut web = publishing(free_port());
    web.host_config["RestartPolicy"] = serde_json::json!({"Name": "always"});
    kit.freeze("shop", &[web], &[]);
    let opts = SiteOptions {
        isolated: true,
        rename: Some("copy".into()),
        ..Default::default()
    };
    thaw(&kit, &opts).unwrap();
    let st = kit.engine.state();
    let hc = &st.containers["copy-web-1"].body["HostConfig"];
    assert_eq!(hc["PortBindings"], serde_json::json!({}));
    assert_eq!(hc["RestartPolicy"]["Name"], "no");
}

#[test]
fn a_remote_engine_gets_its_volumes_through_the_archive_api() {
    let kit = Kit {
        engine: FakeEngine::remote_with_images(&[WEB, DB]),
        ..Kit::new(&[])
    };
    shop(&kit);
    thaw(&kit, &SiteOptions::default()).unwrap();
    let st = kit.engine.state();
    let uploads: Vec<&(String, String, Vec<String>)> = st.uploads.iter().collect();
    let www = uploads
        .iter()
        .find(|(_, _, entries)| entries.iter().any(|e| e.ends_with("cat.jpg")))
        .unwrap_or_else(|| panic!("no upload of shop_www: {uploads:?}"));
    assert!(
        www.2.iter().any(|e| e.ends_with("2026/12/dog.jpg")),
        "{www:?}"
    );
    // Written through a container, which is gone again.
    assert!(
        st.containers.keys().all(|c| c.starts_with("shop-")),
        "{:?}",
        st.containers.keys()
    );
}

#[test]
fn into_restores_bind_mounted_directories_under_a_new_root() {
    let kit = Kit::new(&[WEB]);
    let web =
        crate::ops::testkit::with_bind(service("shop", "web", WEB), "/srv/shop/conf", "/etc/shop");
    kit.freeze(
        "shop",
        &[web],
        &[("bind.srv.shop.conf", "site.conf", "debug = false")],
    );
    let root = kit.dir.path().join("binds");
    let opts = SiteOptions {
        bind_root: Some(root.clone()),
        ..Default::default()
    };
    thaw(&kit, &opts).unwrap();
    let conf = root.join("srv/shop/conf");
    assert_eq!(
        std::fs::read_to_string(conf.join("site.conf")).unwrap(),
        "debug = false"
    );
    let st = kit.engine.state();
    let binds = &st.containers["shop-web-1"].body["HostConfig"]["Binds"];
    assert_eq!(binds[0], format!("{}:/etc/shop", conf.display()));
}

#[test]
fn a_container_in_another_s_network_namespace_is_created_after_it() {
    let kit = Kit::new(&[WEB]);
    let mut sidecar = service("shop", "sidecar", WEB);
    sidecar.host_config["NetworkMode"] = "container:shop-web-1".into();
    sidecar.networks.clear();
    kit.freeze("shop", &[sidecar, service("shop", "web", WEB)], &[]);
    thaw(&kit, &SiteOptions::default()).unwrap();
    let created = kit.engine.calls("create_container");
    assert_eq!(
        created,
        [
            "create_container shop-web-1",
            "create_container shop-sidecar-1"
        ]
    );
    let started = kit.engine.calls("start_container");
    assert_eq!(
        started,
        [
            "start_container shop-web-1",
            "start_container shop-sidecar-1"
        ]
    );
}

#[test]
fn a_cancelled_thaw_removes_what_it_had_created() {
    let kit = Kit::new(&[WEB, DB]);
    let snap = shop(&kit);
    let plan = plan_of(&kit, snap, &SiteOptions::default()).unwrap();
    let progress = Progress::default();
    progress.cancel().cancel();
    let err = failed(apply::execute(
        &kit.repo,
        &kit.engine,
        plan,
        &progress,
        || Ok("safety".into()),
    ));
    assert_eq!(err.kind, ErrorKind::Interrupted, "{err}");
    nothing_left(&kit.engine);
}
