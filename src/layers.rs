//! The layering rule, checked: a module uses only modules of a lower layer, or of its
//! own layer without a circle; inside a folder, sibling files form no circle either.
//! README's "Code layout" states the same table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    // Foundations every layer may use.
    &["error", "sys", "progress", "fault", "interrupt"],
    // Storage and the repository's format.
    &["store", "format"],
    &["crypto"],
    &["repo"],
    // Sources and formats: file trees, databases, the Docker engine adapter, locks.
    &["tree", "db", "docker", "lock", "retention"],
    // Operations: plan and execute.
    &["ops"],
    // Resolving what the user asked for; the run's monitoring.
    &["settings", "monitor"],
    // The binary's command line.
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The code of a file without its comments (doc comments name other modules freely).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names that follow `prefix` (`crate::`, `super::`), including those of a
/// `prefix{a, b::c}` group.
fn referenced(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        } else {
            out.insert(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

/// The code before the file's tests (a test module's `super::` is the file itself).
fn without_tests(code: &str) -> String {
    match code.find("#[cfg(test)]") {
        Some(i) => code[..i].to_string(),
        None => code.to_string(),
    }
}

/// The code of a mod.rs without its `mod` declarations and re-exports.
fn without_declarations(code: &str) -> String {
    code.lines()
        .filter(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("pub(crate) ")
                .or(l.strip_prefix("pub "))
                .unwrap_or(l);
            !(l.starts_with("mod ") || l.starts_with("use "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a folder holds: its files but mod.rs, and its folders.
fn children(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_stem()?.to_string_lossy().into_owned();
            let child = (p.is_dir() && p.join("mod.rs").exists())
                || (p.extension().is_some_and(|x| x == "rs") && name != "mod");
            child.then_some(name)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A circle in `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn modules_use_only_lower_layers_and_form_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut same_layer: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Per folder: sibling file → sibling files it names.
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let parts: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let top = parts[0].as_str();
        if matches!(top, "lib" | "main" | "layers") {
            continue;
        }
        let Some(layer) = layer_of(top) else {
            panic!("src/{} belongs to no layer: add {top} to LAYERS in src/layers.rs and to README's code layout", rel.display());
        };
        let code = code(f);
        for m in referenced(&code, "crate::") {
            if m == top {
                continue;
            }
            match layer_of(&m) {
                Some(l) if l < layer => {}
                Some(l) if l == layer => {
                    same_layer.entry(top.into()).or_default().insert(m);
                }
                _ => wrong.push(format!("src/{} uses crate::{m}", rel.display())),
            }
        }
        // Files of one folder, its mod.rs among them: no circle. A child that names
        // something of mod.rs's own depends on it; mod.rs depends on a child its code
        // uses (declaring a child or re-exporting what it has is no use).
        if parts.len() >= 2 {
            let dir = f.parent().unwrap();
            let is_child = |n: &str| {
                dir.join(format!("{n}.rs")).exists() || dir.join(n).join("mod.rs").exists()
            };
            let code = without_tests(&code);
            let (folder, me, names) = if parts.last().unwrap() == "mod" {
                let folder = parts[..parts.len() - 1].join("/");
                let code = without_declarations(&code);
                let names: BTreeSet<String> = children(dir)
                    .into_iter()
                    .filter(|c| !referenced(&code, &format!("{c}::")).is_empty())
                    .collect();
                (folder, "mod".to_string(), names)
            } else {
                let folder = parts[..parts.len() - 1].join("/");
                let me = parts.last().unwrap().clone();
                let mut names = referenced(&code, "super::");
                names.extend(referenced(
                    &code,
                    &format!("crate::{}::", parts[..parts.len() - 1].join("::")),
                ));
                let names: BTreeSet<String> = names
                    .into_iter()
                    .filter(|n| *n != me && n != "super")
                    .map(|n| if is_child(&n) { n } else { "mod".into() })
                    .filter(|n| n != "mod" || dir.join("mod.rs").exists())
                    .collect();
                (folder, me, names)
            };
            siblings.entry(folder).or_default().insert(me, names);
        }
    }
    assert!(
        wrong.is_empty(),
        "uses of a higher layer:\n  {}",
        wrong.join("\n  ")
    );
    // The engine adapter knows neither the tree nor the database formats: what it reads
    // of a site becomes trees and database endpoints in `ops::sources`.
    let adapter = same_layer.get("docker").cloned().unwrap_or_default();
    assert!(
        !adapter.contains("tree") && !adapter.contains("db"),
        "src/docker uses {adapter:?}; shape sources in ops::sources"
    );
    if let Some(c) = find_cycle(&same_layer) {
        panic!("modules of one layer form a circle: {}", c.join(" → "));
    }
    for (folder, edges) in &siblings {
        if let Some(c) = find_cycle(edges) {
            panic!("files of src/{folder} form a circle: {}", c.join(" → "));
        }
    }
}
