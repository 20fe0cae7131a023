//! Sites on a real Docker engine (dockerd from scripts/services).

use std::process::Command;

use crate::common::*;

fn docker(args: &[&str]) -> String {
    services();
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("running docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sites_are_found_by_label_and_compose_project() {
    services();
    let image = std::env::var("FREEZER_TEST_DOCKER_IMAGE").expect("set by scripts/services");
    let (project, labelled) = (unique("proj"), unique("lab"));
    let (web, data, job) = (unique("web"), unique("data"), unique("job"));
    let compose = format!("com.docker.compose.project={project}");
    docker(&[
        "run",
        "-d",
        "--name",
        &web,
        "--label",
        &compose,
        "--label",
        "com.docker.compose.service=web",
        &image,
        "sleep",
        "300",
    ]);
    docker(&[
        "run", "-d", "--name", &data, "--label", &compose, &image, "sleep", "300",
    ]);
    docker(&["pause", &data]);
    // freezer's own label wins over a compose project.
    docker(&[
        "create",
        "--name",
        &job,
        "--label",
        &compose,
        "--label",
        &format!("dev.freezer.site={labelled}"),
        &image,
        "true",
    ]);

    let sites = json(&freezer(&["sites", "--json"]));
    let find = |name: &str| {
        sites
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    };
    let p = find(&project).unwrap_or_else(|| panic!("{project} not listed: {sites}"));
    assert_eq!(p["source"], "compose");
    let states: Vec<(String, String)> = p["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected = vec![
        (data.clone(), "paused".to_string()),
        (web.clone(), "running".to_string()),
    ];
    expected.sort();
    assert_eq!(states, expected);
    let l = find(&labelled).unwrap_or_else(|| panic!("{labelled} not listed: {sites}"));
    assert_eq!(l["source"], "label");
    assert_eq!(l["containers"][0]["state"], "created");

    docker(&["rm", "-f", &web, &data, &job]);

    // An engine that does not answer: exit 3, and it says which.
    let out = freezer_env(
        &["sites"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/docker.sock"),
        "{}",
        stderr(&out)
    );
}
