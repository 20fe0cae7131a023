//! Shell completions and man pages, generated from the command line's definition.

use std::process::Command;

use crate::common::*;

/// What bash completes for the words `line` (the last one being completed).
fn complete(line: &[&str]) -> String {
    let words = line.join(" ");
    let script = format!(
        "source <({} completions bash) && COMP_WORDS=({words}) && COMP_CWORD={} && COMP_LINE='{words}' && COMP_POINT={} && _freezer freezer '{}' '{}' && echo \"${{COMPREPLY[@]}}\"",
        env!("CARGO_BIN_EXE_freezer"),
        line.len() - 1,
        words.len(),
        line[line.len() - 1],
        line[line.len() - 2],
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn bash_completes_commands_and_flags() {
    assert_eq!(complete(&["freezer", "th"]), "thaw");
    assert_eq!(complete(&["freezer", "freeze", "--mo"]), "--mode");
    let modes = complete(&["freezer", "freeze", "--mode", ""]);
    assert!(
        modes.contains("dehydrated") && modes.contains("hydrated"),
        "{modes}"
    );
    // Every shell clap knows gets a script.
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = freezer(&["completions", shell]);
        assert_ok(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("freezer"),
            "{shell}"
        );
    }
    let out = freezer(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = freezer(&["manpages", dir.path().to_str().unwrap()]);
    assert_ok(&out);
    for page in [
        "freezer",
        "freezer-freeze",
        "freezer-thaw",
        "freezer-drill",
        "freezer-key-add",
    ] {
        let text = std::fs::read_to_string(dir.path().join(format!("{page}.1")))
            .unwrap_or_else(|e| panic!("{page}.1: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}.1 is not roff"
        );
    }
    let freeze = std::fs::read_to_string(dir.path().join("freezer-freeze.1")).unwrap();
    assert!(
        freeze.contains("dehydrated"),
        "the page has the flags' help"
    );
    // The watchdog and this generator are not for users: no pages.
    assert!(!dir.path().join("freezer-guard.1").exists());
    assert!(!dir.path().join("freezer-manpages.1").exists());
}
