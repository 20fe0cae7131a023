//! What a freeze leaves out of a tree: gitignore-style patterns matched on paths
//! relative to the tree's root (ripgrep's `ignore` crate does the matching), and
//! directories whose contents a marker file excludes (`CACHEDIR.TAG`, `NAME`).
//!
//! A directory that is excluded is not descended into, so, as in git, a negation cannot
//! bring back a file below an excluded directory. A directory excluded by a marker keeps
//! its (empty) entry, so a thaw recreates it for the application that expects it. The
//! rules are recorded in the tree's manifest (SPEC.md §6), so a thaw knows which paths of
//! a destination the snapshot never covered.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The first bytes of a valid `CACHEDIR.TAG` (https://bford.info/cachedir/).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// The exclusion rules of one tree, as recorded in its manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excludes {
    /// Gitignore-style patterns, in order (a later `!pattern` re-includes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// Leave out the contents of directories holding a valid `CACHEDIR.TAG`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub caches: bool,
    /// Leave out the contents of directories holding a file of one of these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub if_present: Vec<String>,
}

impl Excludes {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && !self.caches && self.if_present.is_empty()
    }

    /// Rules that leave out everything of a directory but the files `names` in it (a
    /// tree of a few single files).
    pub fn only_files<'a>(names: impl IntoIterator<Item = &'a str>) -> Excludes {
        let mut e = Excludes {
            patterns: vec!["/*".into()],
            ..Default::default()
        };
        for n in names {
            e.keep_file(n);
        }
        e
    }

    /// Keeps one more file in [`Excludes::only_files`] rules.
    pub fn keep_file(&mut self, name: &str) {
        let pattern = format!("!/{}", escape_pattern(name));
        if !self.patterns.contains(&pattern) {
            self.patterns.push(pattern);
        }
    }

    /// These rules followed by `more` (patterns appended, markers joined).
    pub fn merged(&self, more: &Excludes) -> Excludes {
        let mut out = self.clone();
        out.patterns.extend(more.patterns.iter().cloned());
        out.caches |= more.caches;
        for n in &more.if_present {
            if !out.if_present.contains(n) {
                out.if_present.push(n.clone());
            }
        }
        out
    }

    /// Patterns from an exclude file: one per line; blank lines and `#` comments skipped.
    pub fn patterns_from_file(path: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading exclude file {}", path.display()), e))?;
        Ok(text
            .lines()
            .map(|l| l.trim_end())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect())
    }

    /// The matcher for these rules; a pattern that does not parse is a usage error.
    pub fn matcher(&self) -> Result<Matcher> {
        let mut b = GitignoreBuilder::new("/");
        for p in &self.patterns {
            b.add_line(None, p)
                .map_err(|e| Error::usage(format!("exclude pattern {p:?}: {e}")))?;
        }
        let patterns = b
            .build()
            .map_err(|e| Error::usage(format!("exclude patterns: {e}")))?;
        let mut markers = self.if_present.clone();
        if self.caches {
            markers.push("CACHEDIR.TAG".into());
        }
        for m in &markers {
            if m.is_empty() || m.contains('/') {
                return Err(Error::usage(format!(
                    "--exclude-if-present {m:?}: a file name, without '/'"
                )));
            }
        }
        Ok(Matcher {
            patterns,
            caches: self.caches,
            if_present: self.if_present.clone(),
        })
    }
}

/// `name` as a gitignore pattern that matches just that name: the characters that
/// patterns give a meaning (`\ * ? [ ]`, a trailing space) escaped.
pub fn escape_pattern(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '\\' | '*' | '?' | '[' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    if out.ends_with(' ') {
        out.pop();
        out.push_str("\\ ");
    }
    out
}

/// The paths of a tree that `thaw --include PATTERN…` restores: what the patterns match
/// (with everything below it), the hard-link targets they need, and the directories
/// above them (created, not replaced).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub selected: std::collections::HashSet<Vec<u8>>,
    /// Directories restored only to hold what is selected below them.
    pub ancestors: std::collections::HashSet<Vec<u8>>,
}

impl Selection {
    /// Exactly `paths`, with the directories above them.
    pub fn of(paths: impl IntoIterator<Item = Vec<u8>>) -> Selection {
        let mut sel = Selection::default();
        sel.selected.extend(paths);
        sel.add_ancestors();
        sel
    }

    /// Adds the directories above every selected path.
    pub fn add_ancestors(&mut self) {
        let mut ancestors = Vec::new();
        for p in &self.selected {
            let mut a = super::index::parent(p);
            while a != b"." && !self.selected.contains(a) {
                ancestors.push(a.to_vec());
                a = super::index::parent(a);
            }
        }
        self.ancestors.extend(ancestors);
    }

    /// Whether the entry at `path` is restored.
    pub fn has(&self, path: &[u8]) -> bool {
        path == b"." || self.selected.contains(path) || self.ancestors.contains(path)
    }

    /// The selected paths whose parent is not selected: what an in-place thaw swaps.
    pub fn tops(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self
            .selected
            .iter()
            .filter(|p| !self.selected.contains(super::index::parent(p)))
            .cloned()
            .collect();
        out.sort();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.selected.is_empty()
    }
}

/// Decides, entry by entry, what a walk leaves out.
pub struct Matcher {
    patterns: Gitignore,
    caches: bool,
    if_present: Vec<String>,
}

/// Why an entry is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    /// A pattern matches it: the entry and everything below it.
    Pattern,
    /// A marker file in the directory: its contents (the directory itself stays).
    Marked,
}

impl Matcher {
    /// Whether `rel` or a directory above it matches a pattern (what `--include` selects).
    pub fn selects(&self, rel: &[u8], is_dir: bool) -> bool {
        let path = Path::new("/").join(Path::new(OsStr::from_bytes(rel)));
        self.patterns
            .matched_path_or_any_parents(path, is_dir)
            .is_ignore()
    }

    /// Whether the entry at `rel` (relative to the root, `/`-separated; a directory when
    /// `abs_dir` is given, which is then checked for marker files) is left out.
    pub fn check(&self, rel: &[u8], abs_dir: Option<&Path>) -> Option<Excluded> {
        let path = Path::new(OsStr::from_bytes(rel));
        if self
            .patterns
            .matched(Path::new("/").join(path), abs_dir.is_some())
            .is_ignore()
        {
            return Some(Excluded::Pattern);
        }
        let dir = abs_dir?;
        if self.if_present.iter().any(|n| dir.join(n).exists())
            || self.caches && has_cachedir_tag(dir)
        {
            return Some(Excluded::Marked);
        }
        None
    }
}

fn has_cachedir_tag(dir: &Path) -> bool {
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    std::fs::File::open(dir.join("CACHEDIR.TAG"))
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> Matcher {
        Excludes {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
        .matcher()
        .unwrap()
    }

    #[test]
    fn gitignore_semantics() {
        let m = rules(&["*.log", "!keep.log", "/top", "cache/", "a/**/b"]);
        let ex = |p: &[u8], dir: bool| {
            let d = std::env::temp_dir();
            m.check(p, dir.then_some(d.as_path())) == Some(Excluded::Pattern)
        };
        assert!(ex(b"x.log", false));
        assert!(ex(b"deep/x.log", false));
        assert!(!ex(b"deep/keep.log", false));
        assert!(ex(b"top", false));
        assert!(!ex(b"sub/top", false), "anchored");
        assert!(ex(b"cache", true));
        assert!(ex(b"x/cache", true));
        assert!(!ex(b"cache", false), "cache/ names directories only");
        assert!(ex(b"a/b", false));
        assert!(ex(b"a/x/y/b", false));
        assert!(ex(b"caf\xe9.log", false), "non-UTF-8 names match");
    }

    /// A tree of single files keeps exactly them, whatever characters their names have.
    #[test]
    fn only_the_named_files_of_a_directory_are_kept() {
        let names = [
            "db-password.txt",
            "a*b?[c].ini",
            "back\\slash",
            "trailing ",
            "#x",
        ];
        let mut e = Excludes::only_files(names.iter().copied().take(3));
        for n in &names[3..] {
            e.keep_file(n);
        }
        e.keep_file("db-password.txt");
        assert_eq!(e.patterns.len(), 1 + names.len(), "{:?}", e.patterns);
        let m = e.matcher().unwrap();
        let kept = |p: &str, dir: bool| {
            let d = std::env::temp_dir();
            m.check(p.as_bytes(), dir.then_some(d.as_path())).is_none()
        };
        for n in names {
            assert!(kept(n, false), "{n:?}");
        }
        for other in [
            "ab.ini",
            "axb?c.ini",
            "trailing",
            "db-password.txt.bak",
            "x",
        ] {
            assert!(!kept(other, false), "{other:?}");
        }
        assert!(!kept("conf", true), "a directory beside them");
    }

    #[test]
    fn markers() {
        let tmp = tempfile::tempdir().unwrap();
        let (tagged, fake, marked) = (
            tmp.path().join("t"),
            tmp.path().join("f"),
            tmp.path().join("m"),
        );
        for d in [&tagged, &fake, &marked] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(
            tagged.join("CACHEDIR.TAG"),
            [CACHEDIR_SIGNATURE, b"\n"].concat(),
        )
        .unwrap();
        std::fs::write(fake.join("CACHEDIR.TAG"), b"not a tag").unwrap();
        std::fs::write(marked.join(".nobackup"), b"").unwrap();
        let m = Excludes {
            caches: true,
            if_present: vec![".nobackup".into()],
            ..Default::default()
        }
        .matcher()
        .unwrap();
        assert_eq!(m.check(b"t", Some(&tagged)), Some(Excluded::Marked));
        assert_eq!(
            m.check(b"f", Some(&fake)),
            None,
            "an invalid tag marks nothing"
        );
        assert_eq!(m.check(b"m", Some(&marked)), Some(Excluded::Marked));
        assert_eq!(m.check(b"m/.nobackup", None), None);
    }
}
