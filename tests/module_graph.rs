//! The library's module graph has no circle: each top-level module of `src/` (a file,
//! or a folder counted as one) may use the modules below it, never one that uses it
//! back. Read from the source (`crate::<module>` paths), so a new import that closes a
//! circle fails here with the circle named. README "How a request flows" draws it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(std::fs::read_to_string(&p).expect("read source"));
        }
    }
}

/// Module → the crate modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = BTreeMap::new();
    for e in std::fs::read_dir(&src).expect("read src") {
        let p = e.expect("entry").path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        // The crate root and the binary sit above every module.
        if matches!(name.as_str(), "lib" | "main" | "demo") {
            continue;
        }
        let mut texts = Vec::new();
        if p.is_dir() {
            sources(&p, &mut texts);
        } else {
            texts.push(std::fs::read_to_string(&p).expect("read source"));
        }
        let mut deps = BTreeSet::new();
        for t in &texts {
            for (i, _) in t.match_indices("crate::") {
                let rest = &t[i + "crate::".len()..];
                let m: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !m.is_empty() && m != name {
                    deps.insert(m);
                }
            }
        }
        g.insert(name, deps);
    }
    g
}

fn find_cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    stack: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(pos) = stack.iter().position(|s| s == node) {
        let mut c = stack[pos..].to_vec();
        c.push(node.to_string());
        return Some(c);
    }
    if done.contains(node) {
        return None;
    }
    stack.push(node.to_string());
    for d in g.get(node).into_iter().flatten() {
        if let Some(c) = find_cycle(g, d, stack, done) {
            return Some(c);
        }
    }
    stack.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn the_module_graph_has_no_circle() {
    let g = graph();
    assert!(g.contains_key("proxy") && g.contains_key("token"), "{g:?}");
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = find_cycle(&g, m, &mut Vec::new(), &mut done) {
            panic!("module circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn config_and_path_are_leaves_and_the_token_layer_knows_no_http_server() {
    let g = graph();
    assert!(g["path"].is_empty(), "path uses {:?}", g["path"]);
    let config: Vec<_> = g["config"].iter().filter(|m| *m != "path").collect();
    assert!(config.is_empty(), "config uses {config:?}");
    // Leaves (modules that use no other) are fine anywhere: `request_log` puts the
    // request id on the token layer's warnings.
    let token: Vec<_> = g["token"]
        .iter()
        .filter(|m| *m != "config" && !g.get(*m).is_some_and(|d| d.is_empty()))
        .collect();
    assert!(token.is_empty(), "token uses {token:?}");
}
