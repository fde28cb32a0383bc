//! The generated parts of `docs/benchmarks.md`: each benchmark verb owns one section between
//! `<!-- NAME:start -->` and `<!-- NAME:end -->` and rewrites only that.

use anyhow::{Context, Result};

use crate::paths;

/// Replaces section `name` of docs/benchmarks.md with `body` (appended if the markers are missing).
pub fn write(name: &str, body: &str) -> Result<()> {
    let path = paths::repo_root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&path, replace(&doc, name, body))
        .with_context(|| format!("writing {}", path.display()))
}

/// `doc` with section `name` replaced by `body`.
fn replace(doc: &str, name: &str, body: &str) -> String {
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let section = format!("{start}\n{body}\n{end}");
    match (doc.find(&start), doc.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &doc[..a], section, &doc[b + end.len()..]),
        _ => format!("{doc}\n{section}\n"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_only_its_own_section_and_appends_a_missing_one() {
        let doc = "# B\n<!-- a:start -->\nold a\n<!-- a:end -->\ntext\n";
        let new = super::replace(doc, "a", "new a");
        assert_eq!(new, "# B\n<!-- a:start -->\nnew a\n<!-- a:end -->\ntext\n");
        let more = super::replace(&new, "b", "b body");
        assert!(
            more.starts_with(&new) && more.ends_with("<!-- b:start -->\nb body\n<!-- b:end -->\n")
        );
    }
}
