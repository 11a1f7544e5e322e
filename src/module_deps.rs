//! Checks the module map in `lib.rs` against the code: every top-level module's imports of
//! other top-level modules (`crate::x` paths, grouped `crate::{x, y}` ones, and `super::x`
//! reaching the crate root) must be among the ones its map line allows, and there must be no
//! import cycle among top-level modules (STYLE §1: dependencies point inward).
//!
//! Test code is not counted: files and inline modules declared under `#[cfg(test)]` may reach
//! anywhere, as tests are the outermost layer. Comments and string literals are skipped, so a
//! doc link to `crate::x` is not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// module → the top-level modules it imports, each with the files that do.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn top_level_modules_import_only_what_the_module_map_allows_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("reading src/lib.rs");
    let modules = top_level_modules(&lib);
    assert!(modules.len() > 10, "found too few modules: {modules:?}");
    let allowed = module_map(&lib);
    let graph = imports(&src, &modules);

    let mut problems = String::new();
    for module in &modules {
        if !allowed.contains_key(module) {
            let _ = writeln!(
                problems,
                "`{module}` has no line \"//! - `{module}` (may import: …): …\" in lib.rs"
            );
        }
    }
    for (module, targets) in &graph {
        let Some(may) = allowed.get(module) else {
            continue;
        };
        for (target, files) in targets {
            if !may.contains(target) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                let _ = writeln!(
                    problems,
                    "`{module}` imports `{target}` (in {}), which its map line does not allow",
                    files.join(", ")
                );
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        let _ = writeln!(problems, "import cycle: {}", cycle.join(" → "));
        for pair in cycle.windows(2) {
            let files = &graph[&pair[0]][&pair[1]];
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            let _ = writeln!(
                problems,
                "  {} → {}: {}",
                pair[0],
                pair[1],
                files.join(", ")
            );
        }
    }
    assert!(problems.is_empty(), "\n{problems}");
}

#[test]
fn the_checker_sees_grouped_super_and_crate_paths_but_not_comments_strings_or_tests() {
    let tops: BTreeSet<String> = ["a", "b", "c", "d", "e", "f"]
        .map(String::from)
        .into_iter()
        .collect();
    let code = r##"
        use crate::{a::X, b::{self, Y}};
        use super::c;
        // crate::d in a comment
        /* crate::d in a block comment */
        const S: &str = "crate::d in a string";
        const R: &str = r#"crate::d in a raw "string""#;
        const C: char = '{';
        fn f<'a>(x: &'a str) {}
        #[cfg(test)]
        mod tests { use crate::e; fn g() { let s = "}"; } }
        fn h() -> crate::f::Z { todo!() }
    "##;
    let found = paths_in(&strip(code), 1, &tops);
    assert_eq!(found, ["a", "b", "c", "f"].map(String::from).into());
    let cycle = find_cycle(&graph_of(&[("a", "b"), ("b", "c"), ("c", "a")]));
    assert_eq!(cycle.map(|c| c.join(" ")), Some("a b c a".into()));
    assert_eq!(
        find_cycle(&graph_of(&[("a", "b"), ("a", "c"), ("b", "c")])),
        None
    );
}

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph
            .entry((*from).to_owned())
            .or_default()
            .entry((*to).to_owned())
            .or_default()
            .insert("test".into());
    }
    graph
}

/// The modules `lib.rs` declares, not counting test-only ones.
fn top_level_modules(lib: &str) -> BTreeSet<String> {
    let code = strip(lib);
    let tests = test_submodules(lib);
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.strip_suffix(';')?.trim().to_owned())
        })
        .filter(|m| !tests.contains(m))
        .collect()
}

/// The map's items, ``//! - `name` (may import: a, b, c): …`` (`nothing` for none), each
/// possibly continued on `//!   ` lines.
fn module_map(lib: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut items: Vec<String> = Vec::new();
    for line in lib.lines() {
        if let Some(item) = line.strip_prefix("//! - ") {
            items.push(item.to_owned());
        } else if let (Some(more), Some(last)) = (line.strip_prefix("//!   "), items.last_mut()) {
            last.push(' ');
            last.push_str(more.trim());
        }
    }
    let mut map = BTreeMap::new();
    for item in items {
        let Some(rest) = item.strip_prefix('`') else {
            continue;
        };
        let Some((name, rest)) = rest.split_once('`') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix("(may import: ") else {
            continue;
        };
        let Some((list, _)) = rest.split_once(')') else {
            continue;
        };
        let may: BTreeSet<String> = list
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != "nothing")
            .map(String::from)
            .collect();
        map.insert(name.to_owned(), may);
    }
    map
}

/// Every non-test file under `src/` (bar `lib.rs` and `main.rs`), by top-level module.
fn imports(src: &Path, modules: &BTreeSet<String>) -> Graph {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let mut stack: Vec<PathBuf> = modules
        .iter()
        .flat_map(|m| [src.join(format!("{m}.rs")), src.join(m)])
        .filter(|p| p.exists())
        .collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            let entries = std::fs::read_dir(&path).expect("listing a source directory");
            stack.extend(entries.map(|e| e.expect("a directory entry").path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("reading a source file");
            files.push((path, text));
        }
    }
    // Submodules declared `#[cfg(test)] mod x;` live in `x.rs` or `x/` beside this file's
    // own directory (`foo.rs` → `foo/`; `mod.rs` → its directory).
    let mut skipped: BTreeSet<PathBuf> = BTreeSet::new();
    for (path, text) in &files {
        let own_dir = if path.file_name().is_some_and(|n| n == "mod.rs") {
            path.parent().expect("a parent").to_owned()
        } else {
            path.with_extension("")
        };
        for name in test_submodules(text) {
            skipped.insert(own_dir.join(format!("{name}.rs")));
            skipped.insert(own_dir.join(&name));
        }
    }
    let mut graph = Graph::new();
    for (path, text) in &files {
        if skipped.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        let rel = path.strip_prefix(src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs").to_owned())
            .expect("a top-level component");
        let depth =
            rel.components().count() - usize::from(path.file_name().is_some_and(|n| n == "mod.rs"));
        for target in paths_in(&strip(text), depth, modules) {
            if target != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(target)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    graph
}

/// The names of `#[cfg(test)] mod x;` declarations.
fn test_submodules(text: &str) -> Vec<String> {
    let code = strip(text);
    let lines: Vec<&str> = code.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| {
            let rest = w[1]
                .strip_prefix("pub(crate) ")
                .or_else(|| w[1].strip_prefix("pub "))
                .unwrap_or(w[1]);
            Some(
                rest.strip_prefix("mod ")?
                    .strip_suffix(';')?
                    .trim()
                    .to_owned(),
            )
        })
        .collect()
}

/// The top-level modules that (stripped) `code` names: `crate::x`, `crate::{x, y::z}`, and
/// `super::x` with `depth` supers (reaching the crate root from a file `depth` deep).
fn paths_in(code: &str, depth: usize, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = without_test_blocks(code);
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident_at = |i: usize| -> String {
        code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let boundary = |i: usize| {
        i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b'$'
                || bytes[i - 1] == b':')
    };
    let mut roots: Vec<usize> = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if boundary(i) {
            roots.push(i + "crate::".len());
        }
    }
    let supers = "super::".repeat(depth);
    for (i, _) in code.match_indices(&supers) {
        let after = i + supers.len();
        if boundary(i) && !code[after..].starts_with("super::") {
            roots.push(after);
        }
    }
    for at in roots {
        if code[at..].starts_with('{') {
            // A group: its items at brace depth 0, each led by a module name.
            let mut level = 0usize;
            let mut item_start = at + 1;
            for (offset, c) in code[at + 1..].char_indices() {
                let i = at + 1 + offset;
                match c {
                    '{' => level += 1,
                    '}' if level == 0 => {
                        found.insert(ident_at(skip_ws(&code, item_start)));
                        break;
                    }
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        found.insert(ident_at(skip_ws(&code, item_start)));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident_at(at));
        }
    }
    found.retain(|m| modules.contains(m));
    found
}

fn skip_ws(code: &str, at: usize) -> usize {
    at + code[at..].len() - code[at..].trim_start().len()
}

/// `code` (stripped) without inline `#[cfg(test)] mod x { … }` blocks.
fn without_test_blocks(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = rest.find(ATTR) {
        out.push_str(&rest[..i]);
        let after = &rest[i + ATTR.len()..];
        let mut decl = after.trim_start();
        for visibility in ["pub(crate) ", "pub "] {
            decl = decl.strip_prefix(visibility).unwrap_or(decl);
        }
        let block = decl.strip_prefix("mod ").and_then(|m| {
            let j = m.find(['{', ';'])?;
            (m.as_bytes()[j] == b'{').then(|| &m[j..])
        });
        match block {
            Some(block) => rest = &block[matching_close(block)..],
            None => {
                out.push_str(ATTR);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The index just past the `}` closing the `{` that `block` starts with.
fn matching_close(block: &str) -> usize {
    let mut level = 0usize;
    for (i, c) in block.char_indices() {
        match c {
            '{' => level += 1,
            '}' => {
                level = level.saturating_sub(1);
                if level == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    block.len()
}

/// `text` with comments, string and char literals blanked out (lifetimes kept).
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut level = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    level += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    level -= 1;
                    i += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident_before(&chars, i) {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let closing: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let closing: Vec<char> = closing.chars().collect();
            while j < chars.len() && !chars[j..].starts_with(&closing) {
                blank(&mut out, chars[j]);
                j += 1;
            }
            out.push_str("\"\"");
            i = j + closing.len();
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    blank(&mut out, c);
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), kept.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                out.push_str("' '");
                i = j + 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                out.push_str("' '");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// A cycle in `graph` (its first module repeated at the end), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path
                    .iter()
                    .position(|n| n == node)
                    .expect("open nodes are on the path");
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}
