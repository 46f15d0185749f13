//! The house stays a tree: each room (a top-level module of src/) may import
//! only rooms of a lower layer, so data flows one way (../shared/DESIGN.md,
//! "The way data flows"). The test reads every `crate::<room>` path in src/
//! (test modules excluded), and fails on
//! - an import of a room of the same or a higher layer that is not listed in
//!   `DEBT` (an upward import someone just added);
//! - a `DEBT` entry that no longer exists (the list only shrinks: delete the
//!   line when the import is gone);
//! - a room missing from `LAYERS` (a new room must be placed in the tree);
//! - a cycle among the rooms once the debt edges are set aside.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Rooms by layer, lowest first. A room imports only rooms of lower layers.
const LAYERS: &[&[&str]] = &[
    &["time", "report", "beneath"],
    &["config", "metrics"],
    &["identity", "notify"],
    &["http"],
    &["sandbox", "logs", "image", "tools"],
    &["hostwatch", "link", "launcher_log"],
    &["run"],
    &["worker"],
    &["launcher"],
    &["cli"],
    // The reference control plane: a second binary; nothing imports it.
    &["plane"],
    // src/bin/: entries of the second binaries, above everything (like main.rs).
    &["bin"],
];

/// Upward imports tolerated for now, each as (from, to, why it is still
/// there): none today. An entry is a debt with a reason, never a way to
/// silence the test; the test fails once the import is gone.
const DEBT: &[(&str, &str, &str)] = &[];

fn rank(room: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&room))
}

/// The room of a file under src/: its first path component, without `.rs`.
fn room_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its `#[cfg(test)]` modules (which may use any
/// room) and without comments.
fn code_without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to its matching closing brace.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                opened |= l.contains('{');
                if opened && depth <= 0 {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// room → rooms it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let room = room_of(&src, &f);
        if room == "main" || room == "lib" {
            continue; // the binary's entry and the module list sit above all
        }
        let code = code_without_tests(&std::fs::read_to_string(&f).unwrap());
        let deps = g.entry(room.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let before = code[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `liftoff_crate::`
            }
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            // `crate::VERSION`, `crate::EXIT_CONFIG`: constants of lib.rs.
            if !name.is_empty() && name != room {
                deps.insert(name);
            }
        }
        // `use crate::{a, b}` groups.
        for (i, _) in code.match_indices("crate::{") {
            let group: String = code[i + 8..].chars().take_while(|c| *c != '}').collect();
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != room && name != "self" {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

#[test]
fn every_room_imports_only_lower_layers() {
    let g = graph();
    let mut problems = Vec::new();
    for (room, deps) in &g {
        let Some(r) = rank(room) else {
            problems.push(format!(
                "room `{room}` is not in LAYERS: place it in the tree in tests/module_graph.rs"
            ));
            continue;
        };
        for d in deps {
            let Some(dr) = rank(d) else {
                problems.push(format!("`{room}` imports `{d}`, which is not in LAYERS"));
                continue;
            };
            let debt = DEBT.iter().any(|(f, t, _)| f == room && t == d);
            if dr >= r && !debt {
                problems.push(format!(
                    "`{room}` (layer {r}) imports `{d}` (layer {dr}): lower rooms never import higher ones; move the shared part down"
                ));
            }
        }
    }
    for (from, to, why) in DEBT {
        if !g.get(*from).is_some_and(|d| d.contains(*to)) {
            problems.push(format!(
                "DEBT lists `{from}` → `{to}` ({why}) but that import is gone: delete the entry"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_graph_without_debt_has_no_cycle() {
    let mut g = graph();
    for (from, to, _) in DEBT {
        if let Some(d) = g.get_mut(*from) {
            d.remove(*to);
        }
    }
    // Depth-first search with colours: 1 = on the stack, 2 = done.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match colour.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == n).unwrap();
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        colour.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, colour, stack) {
                return Some(c);
            }
        }
        stack.pop();
        colour.insert(n.to_string(), 2);
        None
    }
    let mut colour = BTreeMap::new();
    for n in g.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, &g, &mut colour, &mut stack) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_reader_sees_imports_and_skips_tests() {
    let code = code_without_tests(
        "use crate::config::Config;\n// crate::worker in a comment\nfn f() { crate::logs::x(); }\n#[cfg(test)]\nmod tests {\n    use crate::worker::X;\n}\n",
    );
    assert!(code.contains("crate::config") && code.contains("crate::logs"));
    assert!(!code.contains("crate::worker"), "{code}");
}
