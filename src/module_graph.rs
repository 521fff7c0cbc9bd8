//! The graph of `crate::` references among the library's top-level modules, read from the
//! source text, and the tests that keep it acyclic (the layer order in the crate docs).
//!
//! A reference is any `crate::NAME` path outside comments (`use` lines, inline paths and
//! `crate::{a, b}` groups alike, test code included: a test that reaches up a layer ties the
//! modules as much as code does). Paths inside one module (`super::`, `self::`) are that module's
//! business and not counted. The binary (`main.rs`, `cli/`) sits above the library and is left
//! out. Only compiled in tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges that are known and tolerated for now, with why. Keep this empty where possible: each
/// entry is a cycle waiting to be broken.
const TOLERATED: &[(&str, &str, &str)] = &[];

/// Where one module references another: the first place seen.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub file: PathBuf,
    pub line: usize,
}

/// `from → to → where`, for every top-level module of the library.
pub type Graph = BTreeMap<String, BTreeMap<String, Evidence>>;

/// Reads every library source file under `src` and returns the module graph.
pub fn read(src: &Path) -> std::io::Result<Graph> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(from) = module_of(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file)?;
        let edges = graph.entry(from.clone()).or_default();
        for (line, to) in references(&text) {
            if to != from && modules.contains(&to) {
                edges.entry(to).or_insert_with(|| Evidence {
                    file: file.clone(),
                    line,
                });
            }
        }
    }
    Ok(graph)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(())
}

/// The top-level module a file belongs to; `None` for the crate root and the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "cli" => None,
        _ => Some(name.to_owned()),
    }
}

/// Every `(line, module)` a source text references through `crate::`, comments left out.
fn references(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_block_comment = false;
    // `crate::{` groups can span lines: the open group's depth and its line.
    let mut group: Option<usize> = None;
    for (number, raw) in text.lines().enumerate() {
        let line = strip_comments(raw, &mut in_block_comment);
        let mut rest = line.as_str();
        if let Some(depth) = group.as_mut() {
            rest = group_items(rest, depth, number + 1, &mut found);
            if *depth == 0 {
                group = None;
            } else {
                continue;
            }
        }
        while let Some(at) = rest.find("crate::") {
            let preceded = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            rest = &rest[at + "crate::".len()..];
            if preceded {
                continue; // `mycrate::`, not ours
            }
            if let Some(inner) = rest.strip_prefix('{') {
                let mut depth = 1;
                rest = group_items(inner, &mut depth, number + 1, &mut found);
                if depth > 0 {
                    group = Some(depth);
                    break;
                }
            } else {
                let name = identifier(rest);
                if !name.is_empty() {
                    found.push((number + 1, name.to_owned()));
                }
            }
        }
    }
    found
}

/// Reads the items of a `crate::{...}` group at depth 1 until the group closes; returns what
/// follows it.
fn group_items<'a>(
    mut text: &'a str,
    depth: &mut usize,
    line: usize,
    found: &mut Vec<(usize, String)>,
) -> &'a str {
    let mut expect_item = true;
    while let Some(c) = text.chars().next() {
        match c {
            '{' => *depth += 1,
            '}' => {
                *depth -= 1;
                if *depth == 0 {
                    return &text[1..];
                }
            }
            ',' if *depth == 1 => expect_item = true,
            c if expect_item && *depth == 1 && (c.is_alphabetic() || c == '_') => {
                let name = identifier(text);
                found.push((line, name.to_owned()));
                expect_item = false;
                text = &text[name.len()..];
                continue;
            }
            _ => {}
        }
        text = &text[c.len_utf8()..];
    }
    text
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The line without `//` comments (doc comments included) and `/* */` comments. String
/// literals are not parsed: a `//` inside one ends the line early, which can only hide a
/// reference, and none of ours has one after a URL.
fn strip_comments(line: &str, in_block: &mut bool) -> String {
    let mut out = String::new();
    let mut rest = line;
    loop {
        if *in_block {
            match rest.find("*/") {
                Some(end) => {
                    *in_block = false;
                    rest = &rest[end + 2..];
                }
                None => return out,
            }
        }
        let line_comment = rest.find("//");
        let block = rest.find("/*");
        match (line_comment, block) {
            (Some(l), Some(b)) if b < l => {
                out.push_str(&rest[..b]);
                *in_block = true;
                rest = &rest[b + 2..];
            }
            (None, Some(b)) => {
                out.push_str(&rest[..b]);
                *in_block = true;
                rest = &rest[b + 2..];
            }
            (Some(l), _) => {
                out.push_str(&rest[..l]);
                return out;
            }
            (None, None) => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// The cycles of `graph` (one per strongly connected component of more than one module), each
/// as the modules in order around it.
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm; the graph is a few dozen nodes, so recursion is fine.
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let next = state.index.len();
        state.index.insert(node, next);
        state.low.insert(node, next);
        state.stack.push(node);
        state.on_stack.insert(node);
        let targets: Vec<&'a str> = state
            .graph
            .get(node)
            .map(|edges| edges.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for target in targets {
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[node].min(state.low[target]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.low[node].min(state.index[target]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack.remove(top);
                component.push(top);
                if top == node {
                    break;
                }
            }
            state.components.push(component);
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    let mut found: Vec<Vec<String>> = Vec::new();
    for component in state.components.iter().filter(|c| c.len() > 1) {
        // The shortest cycle through each member names every tie, not only the first.
        let mut members: Vec<&str> = component.clone();
        members.sort_unstable();
        for start in &members {
            let cycle = walk_around(graph, &members, start);
            let rotated = rotate_to_smallest(&cycle);
            if !found.contains(&rotated) {
                found.push(rotated);
            }
        }
    }
    found
}

/// The same closed walk, started at its alphabetically first module.
fn rotate_to_smallest(cycle: &[String]) -> Vec<String> {
    let open = &cycle[..cycle.len() - 1];
    let first = (0..open.len())
        .min_by_key(|&i| &open[i])
        .expect("a cycle has members");
    let mut rotated: Vec<String> = open[first..]
        .iter()
        .chain(&open[..first])
        .cloned()
        .collect();
    rotated.push(rotated[0].clone());
    rotated
}

/// The shortest closed walk from `start` through a component, so the message names a real
/// chain of imports.
fn walk_around(graph: &Graph, component: &[&str], start: &str) -> Vec<String> {
    let members: BTreeSet<&str> = component.iter().copied().collect();
    // Breadth-first from start's successors back to start, inside the component.
    let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut seen = BTreeSet::new();
    while let Some(node) = queue.pop_front() {
        for target in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
            let target = target.as_str();
            if !members.contains(target) {
                continue;
            }
            if target == start {
                let mut path = Vec::new();
                let mut at = node;
                loop {
                    path.push(at.to_owned());
                    if at == start {
                        break;
                    }
                    at = previous[at];
                }
                path.reverse();
                path.push(start.to_owned());
                return path;
            }
            if seen.insert(target) {
                previous.insert(target, node);
                queue.push_back(target);
            }
        }
    }
    component.iter().map(|s| (*s).to_owned()).collect()
}

/// A cycle as a readable chain with where each step is taken.
pub fn describe(graph: &Graph, cycle: &[String]) -> String {
    let mut text = cycle.join(" → ");
    for pair in cycle.windows(2) {
        if let Some(evidence) = graph.get(&pair[0]).and_then(|edges| edges.get(&pair[1])) {
            text.push_str(&format!(
                "\n    {} → {}: {}:{}",
                pair[0],
                pair[1],
                evidence
                    .file
                    .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                    .unwrap_or(&evidence.file)
                    .display(),
                evidence.line
            ));
        }
    }
    text
}

/// The graph without the [`TOLERATED`] edges.
pub fn without_tolerated(mut graph: Graph) -> Graph {
    for (from, to, _why) in TOLERATED {
        if let Some(edges) = graph.get_mut(*from) {
            edges.remove(*to);
        }
    }
    graph
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    fn graph_of(edges: &[(&str, &str)]) -> Graph {
        let mut graph = Graph::new();
        for (from, to) in edges {
            graph.entry((*from).to_owned()).or_default().insert(
                (*to).to_owned(),
                Evidence {
                    file: PathBuf::from(format!("src/{from}.rs")),
                    line: 1,
                },
            );
            graph.entry((*to).to_owned()).or_default();
        }
        graph
    }

    #[test]
    fn no_module_of_the_library_imports_one_that_imports_it_back() {
        let graph = without_tolerated(read(&src()).expect("src/ is readable"));
        let found = cycles(&graph);
        let described: Vec<String> = found.iter().map(|c| describe(&graph, c)).collect();
        assert!(
            found.is_empty(),
            "import cycles among src/ modules (each must be broken by moving the shared type \
             to the lower module or a leaf; see the layer order in src/lib.rs):\n{}",
            described.join("\n")
        );
    }

    /// `cargo test --lib module_graph -- --ignored --nocapture` prints the graph, lowest module
    /// first, for docs/architecture.md and reviews.
    #[test]
    #[ignore = "prints the graph; run on demand"]
    fn print_the_module_graph() {
        let graph = read(&src()).expect("src/ is readable");
        for (from, edges) in &graph {
            let to: Vec<&str> = edges.keys().map(String::as_str).collect();
            println!("{from} → {}", to.join(", "));
        }
    }

    #[test]
    fn references_are_read_from_paths_groups_and_not_comments() {
        let text = "use crate::config::{A, B};\n\
                    use crate::{routing::X, shadow::{Y, Z},\n    store};\n\
                    /// see [`crate::admin`]\n\
                    let x = crate::metrics::Metrics::new(); // crate::proxy\n\
                    /* crate::server */ let y = mycrate::health;\n";
        let names: Vec<String> = references(text).into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            names,
            ["config", "routing", "shadow", "store", "metrics"],
            "{names:?}"
        );
    }

    #[test]
    fn a_cycle_is_named_module_by_module_in_import_order() {
        let graph = graph_of(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]);
        let found = cycles(&graph);
        assert_eq!(found, [["a", "b", "c", "a"]]);
        let text = describe(&graph, &found[0]);
        assert!(text.starts_with("a → b → c → a"), "{text}");
        assert!(text.contains("b → c: src/b.rs:1"), "{text}");
    }

    #[test]
    fn a_layered_graph_has_no_cycle() {
        let graph = graph_of(&[
            ("proxy", "routing"),
            ("routing", "config"),
            ("proxy", "config"),
        ]);
        assert!(cycles(&graph).is_empty());
    }

    #[test]
    fn the_graph_reads_the_real_tree() {
        let graph = read(&src()).expect("src/ is readable");
        assert!(graph["routing"].contains_key("config"), "{graph:?}");
        assert!(!graph.contains_key("main") && !graph.contains_key("cli"));
    }
}
