//! "Did you mean": the closest of the names a place accepts, for a name it does not know.

/// The candidate closest to `word`, if it is close enough to be a likely slip: at most one
/// edit (insert, delete, substitute, swap) per three characters, and at least one allowed.
/// Case differences count as no edit at all.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let allowed = (lower.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|candidate| *candidate != word)
        .map(|candidate| {
            (
                strsim::damerau_levenshtein(&lower, &candidate.to_lowercase()),
                candidate,
            )
        })
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `did you mean `x`?` for the closest candidate, or a list of every candidate.
pub(crate) fn hint<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
    what: &str,
) -> String {
    match closest(word, candidates.clone()) {
        Some(best) => format!("did you mean `{best}`?"),
        None => {
            let all = list(candidates);
            if all.is_empty() {
                format!("there are no {what}")
            } else {
                format!("{what}: {all}")
            }
        }
    }
}

/// `a`, `b`, `c`: names for people, never Rust's debug form.
pub(crate) fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_listed() {
        let fields = ["name", "hosts", "methods", "paths", "allow", "deny"];
        assert_eq!(closest("nmae", fields), Some("name"));
        assert_eq!(closest("Paths", fields), Some("paths"));
        assert_eq!(closest("method", fields), Some("methods"));
        assert_eq!(closest("x", fields), None);
        assert_eq!(closest("audiences", fields), None);
        assert_eq!(hint("alow", fields, "fields"), "did you mean `allow`?");
        assert_eq!(
            hint("zzz", ["a", "b"], "known issuers"),
            "known issuers: `a`, `b`"
        );
        assert_eq!(
            hint("zzz", [], "known issuers"),
            "there are no known issuers"
        );
    }
}
