//! Which rules can match a path: a tree of the literal path segments each rule's paths start
//! with, so a decision looks at the rules along its own path and never at all of them.
//!
//! A policy with 100,000 rules typically puts most of them under a few first segments
//! (`/v1/tenants/t123/…`): an index by the first segment alone hands every request tens of
//! thousands of candidates. Here a rule sits at the deepest node every path it can match
//! passes through, and a request collects the rules of each node on its way down; the work
//! grows with the path's depth, not with the number of rules.
//!
//! Built from the rules themselves when the engine is made (not read from the blob): an
//! index cannot disagree with the rules it was derived from. Segments are compared ASCII
//! lower-cased: deny rules match every spelling of their paths (see
//! [`crate::matcher::Spelling`]); a node may hold a rule the request's spelling does not
//! match, never miss one that it does (the matcher decides).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::compiled::{CompiledRule, PathPattern, Segment};

/// One node: the rules whose paths all pass through it, and the segments below it.
#[derive(Debug, Default)]
struct Node {
    /// Rule indices, ascending.
    rules: Vec<u32>,
    /// Lower-cased segment → node index.
    children: HashMap<Box<str>, u32>,
}

/// The rules of a policy by the literal segments their paths start with.
#[derive(Debug)]
pub(super) struct RuleIndex {
    /// `nodes[0]` is the root: rules that can match a path starting anywhere.
    nodes: Vec<Node>,
}

/// The literal segments every path a pattern matches starts with (in any spelling the
/// matcher accepts), lower-cased; empty when it says nothing about the first segment. A
/// trailing empty segment is left out: a deny rule's path matches with or without its
/// trailing `/`.
fn literal_segments(pattern: &PathPattern) -> Vec<String> {
    let split = |text: &str| -> Vec<String> {
        let mut segments: Vec<String> = text
            .strip_prefix('/')
            .unwrap_or(text)
            .split('/')
            .map(str::to_ascii_lowercase)
            .collect();
        while segments.last().is_some_and(String::is_empty) {
            segments.pop();
        }
        segments
    };
    match pattern {
        // `/a/b` (or `/a/b/`): every segment.
        PathPattern::Exact(path) => split(path),
        // `/a/b/` from `/a/b/*`: `a`, `b`.
        PathPattern::Prefix(prefix) => split(prefix),
        // `/a/bc` from `/a/bc*`: `a` (the last segment is only the start of one).
        PathPattern::TextPrefix(prefix) => {
            let mut segments = split(prefix);
            segments.pop();
            segments
        }
        PathPattern::Suffix(_) | PathPattern::Any => Vec::new(),
        PathPattern::Template { segments, .. } => {
            let mut literals: Vec<String> = segments
                .iter()
                .map_while(|segment| match segment {
                    Segment::Literal(literal) => Some(literal.to_ascii_lowercase()),
                    Segment::Capture { .. } => None,
                })
                .collect();
            while literals.last().is_some_and(String::is_empty) {
                literals.pop();
            }
            literals
        }
    }
}

impl RuleIndex {
    /// Indexes every rule under each of its paths (a rule without paths at the root).
    pub(super) fn new(rules: &[CompiledRule]) -> RuleIndex {
        let mut index = RuleIndex {
            nodes: vec![Node::default()],
        };
        for (position, rule) in rules.iter().enumerate() {
            let Ok(id) = u32::try_from(position) else {
                break;
            };
            if rule.paths.is_empty() {
                index.insert(&[], id);
            }
            for path in &rule.paths {
                index.insert(&literal_segments(path), id);
            }
        }
        index
    }

    fn insert(&mut self, segments: &[String], rule: u32) {
        let mut at = 0usize;
        for segment in segments {
            let existing = self
                .nodes
                .get(at)
                .and_then(|node| node.children.get(segment.as_str()).copied());
            let next = match existing {
                Some(next) => next,
                None => {
                    let Ok(next) = u32::try_from(self.nodes.len()) else {
                        break;
                    };
                    self.nodes.push(Node::default());
                    if let Some(node) = self.nodes.get_mut(at) {
                        node.children.insert(segment.as_str().into(), next);
                    }
                    next
                }
            };
            at = next as usize;
        }
        if let Some(node) = self.nodes.get_mut(at)
            && node.rules.last() != Some(&rule)
        {
            node.rules.push(rule);
        }
    }

    /// The rules that can match `path` (canonical, see [`crate::canonical`]), ascending.
    pub(super) fn candidates(&self, path: &str) -> Vec<u32> {
        let mut found: Vec<u32> = Vec::new();
        let mut sources = 0usize;
        let mut node = self.nodes.first();
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        while let Some(current) = node {
            if !current.rules.is_empty() {
                found.extend_from_slice(&current.rules);
                sources += 1;
            }
            if current.children.is_empty() {
                break;
            }
            let Some(segment) = segments.next() else {
                break;
            };
            let key: Cow<'_, str> = if segment.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(segment.to_ascii_lowercase())
            } else {
                Cow::Borrowed(segment)
            };
            node = current
                .children
                .get(key.as_ref())
                .and_then(|&next| self.nodes.get(next as usize));
        }
        // Each node's list is ascending; several are merged into rule order (a rule listed
        // under two of its paths on one way down appears once).
        if sources > 1 {
            found.sort_unstable();
            found.dedup();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::parse_path;

    fn key(path: &str) -> Vec<String> {
        literal_segments(&parse_path(path).map(|(p, _)| p).unwrap_or(PathPattern::Any))
    }

    #[test]
    fn each_pattern_is_keyed_by_the_segments_every_match_starts_with() {
        assert_eq!(key("/v1/Tenants/t1"), ["v1", "tenants", "t1"]);
        assert_eq!(key("/v1/tenants/t1/"), ["v1", "tenants", "t1"]);
        assert_eq!(key("/v1/tenants/*"), ["v1", "tenants"]);
        assert_eq!(key("/v1/ten*"), ["v1"]);
        assert_eq!(key("/ten*"), Vec::<String>::new());
        assert_eq!(key("/v1/models/{m}:predict"), ["v1", "models"]);
        assert_eq!(key("/{tenant}/x"), Vec::<String>::new());
        assert_eq!(key("*.json"), Vec::<String>::new());
        assert_eq!(key("/*"), Vec::<String>::new());
        assert_eq!(key("/"), Vec::<String>::new());
    }
}
