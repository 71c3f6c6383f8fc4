//! The code's shape, checked: the modules form layers with no cycle
//! (api → node → raft → storage → space, and neither `space` nor
//! `placement` imports the other), and nothing decides by reading an
//! error's text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The source without comments (line and doc comments), so a module named
/// in prose is not an import.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module → the top-level modules it names through `crate::`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path").as_os_str().to_string_lossy().to_string();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "bin" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).expect("readable source"));
        let uses = graph.entry(module.clone()).or_default();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .filter_map(|part| part.trim().split("::").next().map(str::trim).map(str::to_string))
                    .filter(|name| !name.is_empty())
                    .collect()
            } else {
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
                vec![rest[..end].to_string()]
            };
            for name in names {
                if name != module && name != "self" {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|on_path| on_path == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_form_layers_with_no_cycle() {
    let graph = module_graph();
    assert!(graph.len() > 10, "the scan found the modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("the modules import each other in a cycle: {}", cycle.join(" → "));
    }
    // The message path's layers: each imports only later ones.
    let layers = ["api", "node", "raft", "storage", "space"];
    for (upper_at, upper) in layers.iter().enumerate() {
        for lower in &layers[upper_at + 1..] {
            let imports = &graph[*lower];
            assert!(!imports.contains(*upper), "{lower} imports {upper}, a layer above it: {imports:?}");
        }
    }
    assert!(graph["api"].contains("node") && graph["node"].contains("raft"), "{graph:?}");
    assert!(graph["raft"].contains("storage") && graph["storage"].contains("space"), "{graph:?}");
    for (one, other) in [("space", "placement"), ("placement", "space")] {
        assert!(!graph[one].contains(other), "{one} imports {other}: {:?}", graph[one]);
    }
    // The disk layer knows neither the wire nor the API's errors.
    for wire in ["pb", "api", "error"] {
        assert!(!graph["storage"].contains(wire), "storage imports {wire}: {:?}", graph["storage"]);
    }
}

#[test]
fn the_layer_scan_finds_a_cycle_when_there_is_one() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default();
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}

/// Lines that read an error's text to decide something: a status's
/// message, or an error's text searched for words.
fn text_decisions(code: &str) -> Vec<String> {
    let searches = [".contains(", ".starts_with(", ".ends_with(", ".find(", "==", "matches!("];
    code.lines()
        .filter(|line| {
            let reads_status_text = line.contains("status.message()")
                || (line.contains(".message().") && !line.contains(".message().await"));
            let searches_error_text = (line.contains("error.to_string()") || line.contains("message()"))
                && searches.iter().any(|search| line.contains(search));
            reads_status_text || searches_error_text
        })
        .map(|line| line.trim().to_string())
        .collect()
}

#[test]
fn nothing_decides_by_reading_an_error_message() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // The one place a status's message is read: to keep it as the text of
    // the error it becomes (never to choose the kind).
    let codec = root.join("error.rs");
    let mut found = Vec::new();
    for file in rust_files(&root).into_iter().filter(|file| *file != codec) {
        let code = code_of(&std::fs::read_to_string(&file).expect("readable source"));
        for line in text_decisions(&code) {
            found.push(format!("{}: {line}", file.display()));
        }
    }
    assert!(found.is_empty(), "decisions made from error text:\n{}", found.join("\n"));
}

#[test]
fn the_text_scan_finds_what_it_looks_for() {
    let code = "if status.message().contains(\"not the leader\") {\n    retry();\n}";
    assert_eq!(text_decisions(code).len(), 1);
    assert_eq!(text_decisions("if error.to_string().contains(\"too long\") {}").len(), 1);
    assert!(text_decisions("let kind = ApiError::from_status(&status).kind;").is_empty());
}
