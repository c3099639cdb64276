//! The path index: rules by the first path segment they can match, so a decision looks at
//! the rules for its path's first segment (plus those that can match any), never at all.

use std::collections::BTreeMap;

use crate::compiled::{CompiledRule, PathIndex, PathPattern, Segment};
use crate::matcher;

fn index_key(pattern: &PathPattern) -> Option<String> {
    match pattern {
        PathPattern::Exact(p) => Some(matcher::first_segment(p).to_owned()),
        PathPattern::Prefix(p) => {
            // `/v2/` indexes under `v2`; `/` (from `/*`) can match anything.
            let rest = p.strip_prefix('/')?;
            let (first, _) = rest.split_once('/')?;
            Some(first.to_owned())
        }
        // `/v2/mod*` indexes under `v2`; `/mod*` can match `model`, `modules`…
        PathPattern::TextPrefix(p) => {
            let rest = p.strip_prefix('/')?;
            let (first, _) = rest.split_once('/')?;
            Some(first.to_owned())
        }
        // A suffix or `*` says nothing about the first segment.
        PathPattern::Suffix(_) | PathPattern::Any => None,
        PathPattern::Template { segments, .. } => match segments.first()? {
            Segment::Literal(l) => Some(l.clone()),
            Segment::Capture { .. } => None,
        },
    }
}

pub(super) fn build_index(rules: &[CompiledRule]) -> PathIndex {
    let mut by_segment: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut any = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let keys: Option<Vec<String>> = if rule.paths.is_empty() {
            None
        } else {
            rule.paths.iter().map(index_key).collect()
        };
        match keys {
            Some(keys) => {
                for key in keys {
                    let ids = by_segment.entry(key).or_default();
                    if ids.last() != Some(&(i as u32)) {
                        ids.push(i as u32);
                    }
                }
            }
            None => any.push(i as u32),
        }
    }
    PathIndex {
        by_first_segment: by_segment.into_iter().collect(),
        any,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::compiled;

    #[test]
    fn rules_are_indexed_by_their_first_literal_segment() {
        let text = r#"version = 1
[[rules]]
name = "score"
paths = ["/score", "/v2/models/{m}/infer"]
allow = "anyone"
[[rules]]
name = "all"
paths = ["/*"]
allow = "anyone"
[[rules]]
name = "templated"
paths = ["/{tenant}/x"]
allow = "anyone"
[[rules]]
name = "anywhere"
methods = ["GET"]
allow = "anyone"
[[rules]]
name = "v2"
paths = ["/v2/health/*"]
deny = "anyone"
"#;
        let index = compiled(text).policy.path_index;
        assert_eq!(
            index.by_first_segment,
            [("score".to_owned(), vec![0]), ("v2".to_owned(), vec![0, 4])]
        );
        assert_eq!(index.any, [1, 2, 3]);
    }
}
