//! Checks a YAML document's size as parsed before it is turned into values.
//!
//! In: the text of one YAML document. Out: `Ok` when it stays within
//! [`MAX_DOCUMENT_BYTES`], [`MAX_DEPTH`], [`MAX_NODES`] (counting every node
//! an alias copies, as the value would hold it) and [`MAX_ALIASES`], else the first place
//! where it does not, or the parser's own error. A streaming event parser
//! does the counting, so a document is refused after reading only what
//! exceeds a bound: a few KB of aliases that would expand to gigabytes, or a
//! long run of nested brackets, cost no more than their own bytes.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{ErrorKind, Event, Marker, Parser};

/// Largest document read into values (16 MiB; its values take several
/// times that). A larger cluster dump fits as JSON, read item by item.
pub const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// Deepest nesting of sequences and mappings (Kubernetes objects nest about 15 deep).
pub const MAX_DEPTH: usize = 64;
/// Most nodes in one document, each alias counted as the nodes it copies.
pub const MAX_NODES: u64 = 1_000_000;
/// Most aliases in one document.
pub const MAX_ALIASES: usize = 1_000;

/// Why a document was refused before it was read into values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    /// Longer than [`MAX_DOCUMENT_BYTES`].
    #[error("{0} bytes, more than the {MAX_DOCUMENT_BYTES}-byte limit of one document")]
    TooLarge(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
    /// More than [`MAX_NODES`] nodes once aliases are expanded.
    #[error("more than {MAX_NODES} nodes once aliases are expanded")]
    TooManyNodes,
    /// More than [`MAX_ALIASES`] aliases.
    #[error("more than {MAX_ALIASES} aliases")]
    TooManyAliases,
    /// Not valid YAML to the event parser. Its message is kept for the
    /// fuzz target and tests; the loader lets serde_yaml report the
    /// document instead, so errors read as before.
    #[error("invalid YAML: {0}")]
    Invalid(String),
}

/// The 1-based line (within `text`) where `text` first exceeds a bound.
/// The parser's own nesting limit (it refuses before emitting the events
/// for a long run of brackets) counts as [`BoundError::TooDeep`].
pub fn check(text: &str) -> Result<(), (usize, BoundError)> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err((1, BoundError::TooLarge(text.len())));
    }
    let mut parser = Parser::new_from_str(text);
    // Per anchor: the nodes its value holds, aliases expanded.
    let mut anchored: HashMap<usize, u64> = HashMap::new();
    // Per open collection: its anchor and the node count where it started.
    let mut open: Vec<(usize, u64)> = Vec::new();
    let (mut nodes, mut aliases) = (0_u64, 0_usize);
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|error| {
            let bound = if matches!(error.kind(), ErrorKind::RecursionLimitExceeded) {
                BoundError::TooDeep
            } else {
                BoundError::Invalid(error.info())
            };
            (line_of_marker(text, error.marker()), bound)
        })?;
        let line = line_of_marker(text, &span.start);
        match event {
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                nodes += 1;
                open.push((anchor, nodes));
                if open.len() > MAX_DEPTH {
                    return Err((line, BoundError::TooDeep));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = open.pop()
                    && anchor != 0
                {
                    anchored.insert(anchor, nodes - start + 1);
                }
            }
            Event::Scalar(_, _, anchor, _) => {
                nodes += 1;
                if anchor != 0 {
                    anchored.insert(anchor, 1);
                }
            }
            Event::Alias(anchor) => {
                aliases += 1;
                if aliases > MAX_ALIASES {
                    return Err((line, BoundError::TooManyAliases));
                }
                // An alias to a collection still open (a recursive one) copies what it holds so far.
                let copied = anchored.get(&anchor).copied().unwrap_or(1);
                nodes = nodes.saturating_add(copied);
            }
            _ => {}
        }
        if nodes > MAX_NODES {
            return Err((line, BoundError::TooManyNodes));
        }
    }
    Ok(())
}

/// The 1-based line of `text` holding byte `offset`, counting `\n` only,
/// as the file's lines are counted everywhere else.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// [`line_of`] for a parser position (a character index when the byte offset is unknown).
fn line_of_marker(text: &str, marker: &Marker) -> usize {
    let offset = marker
        .byte_offset()
        .unwrap_or_else(|| text.char_indices().nth(marker.index()).map_or(text.len(), |(offset, _)| offset));
    line_of(text, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_manifests_pass() {
        assert_eq!(check("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {x: &v y, z: *v}}\n"), Ok(()));
    }

    #[test]
    fn alias_fan_out_is_refused_at_the_line_it_exceeds() {
        // 1,000 scalars under one anchor, then rows of aliases to it.
        let anchor = format!("a: &a [{}]\n", vec!["x"; 1000].join(","));
        let row = format!("- [{}]\n", vec!["*a"; 100].join(","));
        let text = format!("{anchor}b:\n{}", row.repeat(20));
        let (line, error) = check(&text).expect_err("bounded");
        assert_eq!(error, BoundError::TooManyNodes);
        // 1,000 nodes per alias: the 1,000th alias (row 10, line 12) passes a million.
        assert_eq!(line, 12);
    }

    #[test]
    fn nested_aliases_are_counted_as_expanded() {
        let mut text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
        for level in 1..10 {
            let refs = vec![format!("*a{}", level - 1); 10].join(",");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        assert_eq!(check(&text).map_err(|(_, error)| error), Err(BoundError::TooManyNodes));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(100_000);
        assert_eq!(check(&text), Err((1, BoundError::TooDeep)));
        let block = (0..70).map(|depth| format!("{}k:\n", "  ".repeat(depth))).collect::<String>();
        assert_eq!(check(&block).map_err(|(_, error)| error), Err(BoundError::TooDeep));
    }

    #[test]
    fn lines_count_newlines_only() {
        // A lone `\r` is a line break to YAML parsers, not to the file's lines.
        let text = "a: 1\rb: 2\nc: [\r\n";
        assert_eq!(line_of(text, text.find('c').expect("c")), 2);
        assert_eq!(line_of(text, usize::MAX), 3);
        let deep = format!("a: 1\r\rb:\n{}", "[".repeat(100));
        assert_eq!(check(&deep).map_err(|(line, _)| line), Err(2));
    }

    #[test]
    fn many_aliases_are_refused() {
        let text = format!("a: &a x\nb: [{}]\n", vec!["*a"; MAX_ALIASES + 1].join(","));
        assert_eq!(check(&text), Err((2, BoundError::TooManyAliases)));
    }
}
