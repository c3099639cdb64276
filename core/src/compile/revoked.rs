//! `[revoked]`: subjects scoped by issuer, like rule subjects (`sub` is unique per issuer
//! only), and token ids. A plain `subjects` list is only unambiguous in a single-issuer
//! policy; otherwise the table form `[revoked.subjects] ISSUER = [...]` says whose.

use std::collections::HashMap;

use super::diagnostics::Context;
use super::suggest;
use crate::compiled::{Revocations, ScopedSubject};
use crate::source::{RevokedSource, RevokedSubjects};

pub(super) fn compile_revoked(
    cx: &mut Context<'_>,
    source: &RevokedSource,
    issuers: &HashMap<&str, u32>,
) -> Revocations {
    let mut token_ids = Vec::new();
    for id in &source.token_ids {
        if id.get_ref().is_empty() {
            cx.error(
                "empty_name",
                &id.span(),
                "`[revoked] token_ids` has an empty id `\"\"`",
                "remove `\"\"` from `token_ids`",
            );
        } else {
            token_ids.push(id.get_ref().clone());
        }
    }
    token_ids.sort();
    token_ids.dedup();
    Revocations {
        subjects: subjects(cx, source, issuers),
        token_ids,
    }
}

fn subjects(
    cx: &mut Context<'_>,
    source: &RevokedSource,
    issuers: &HashMap<&str, u32>,
) -> Vec<ScopedSubject> {
    let Some(subjects) = &source.subjects else {
        return Vec::new();
    };
    let span = subjects.span();
    let mut out = Vec::new();
    let mut push = |cx: &mut Context<'_>, issuer: u32, subject: &str| {
        if subject.is_empty() {
            cx.error(
                "empty_name",
                &span,
                "`[revoked] subjects` names an empty subject `\"\"`",
                "remove `\"\"`",
            );
        } else {
            out.push(ScopedSubject {
                issuer,
                subject: subject.to_owned(),
            });
        }
    };
    let mut known: Vec<&str> = issuers.keys().copied().collect();
    known.sort_unstable();
    match subjects.get_ref() {
        RevokedSubjects::List(list) => match issuers.values().copied().collect::<Vec<u32>>()[..] {
            [issuer] => {
                for subject in list {
                    push(cx, issuer, subject);
                }
            }
            _ if list.is_empty() => {}
            [] => cx.error(
                "unscoped_subjects",
                &span,
                "`[revoked] subjects` names subjects, but the policy has no issuer",
                "add the issuer under `[issuers.NAME]`, or remove the list",
            ),
            _ => cx.error(
                "unscoped_subjects",
                &span,
                format!(
                    "`[revoked] subjects` is a plain list, but the policy has {} issuers and `sub` is unique per issuer only",
                    issuers.len()
                ),
                format!(
                    "write `[revoked.subjects]` with one list per issuer ({}), e.g. `{} = [\"svc-old\"]`",
                    suggest::list(known.iter().copied()),
                    known.first().copied().unwrap_or("keycloak")
                ),
            ),
        },
        RevokedSubjects::ByIssuer(by_issuer) => {
            for (name, list) in by_issuer {
                match issuers.get(name.as_str()) {
                    Some(&issuer) => {
                        for subject in list {
                            push(cx, issuer, subject);
                        }
                    }
                    None if cx.malformed_issuers.contains(name) => {}
                    None => cx.error(
                        "unknown_issuer",
                        &span,
                        format!("`[revoked.subjects]` names unknown issuer `{name}`"),
                        suggest::hint(name, known.iter().copied(), "known issuers"),
                    ),
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{compiled, errors_of, kinds_of};
    use crate::compiled::ScopedSubject;

    const ISSUER: &str = "audiences = [\"api\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n";

    fn policy(issuers: &[&str], revoked: &str) -> String {
        let mut text = "version = 1\n".to_owned();
        for name in issuers {
            text.push_str(&format!(
                "[issuers.{name}]\nissuer = \"https://{name}\"\n{ISSUER}"
            ));
        }
        text.push_str("[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = \"authenticated\"\n");
        text.push_str(revoked);
        text
    }

    fn scoped(issuer: u32, subject: &str) -> ScopedSubject {
        ScopedSubject {
            issuer,
            subject: subject.to_owned(),
        }
    }

    /// Issue 8, defect 6: `[revoked] subjects` compared the bare `sub` of any issuer.
    #[test]
    fn a_plain_list_needs_a_single_issuer() {
        let list = "[revoked]\nsubjects = [\"svc-old\"]\n";
        let errors = errors_of(&policy(&["kc", "entra"], list));
        assert_eq!(kinds_of(&errors), ["unscoped_subjects"]);
        assert!(
            errors[0]
                .hint
                .as_deref()
                .unwrap()
                .contains("[revoked.subjects]")
        );
        let one = compiled(&policy(&["kc"], list));
        assert_eq!(one.policy.revoked.subjects, [scoped(0, "svc-old")]);
    }

    #[test]
    fn the_table_form_scopes_each_list() {
        let table = "[revoked]\ntoken_ids = [\"j2\", \"j1\", \"j1\"]\n[revoked.subjects]\nkc = [\"b\", \"a\"]\nentra = [\"a\"]\n";
        let revoked = compiled(&policy(&["kc", "entra"], table)).policy.revoked;
        // entra = 0, kc = 1 (name order)
        assert_eq!(
            revoked.subjects,
            [scoped(0, "a"), scoped(1, "a"), scoped(1, "b")]
        );
        assert_eq!(revoked.token_ids, ["j1", "j2"]);
        let unknown = "[revoked.subjects]\nokta = [\"a\"]\n";
        assert_eq!(
            kinds_of(&errors_of(&policy(&["kc"], unknown))),
            ["unknown_issuer"]
        );
    }

    /// Issue 8, defect 11: `subjects = [""]` was accepted.
    #[test]
    fn empty_subjects_and_ids_are_refused() {
        let list = "[revoked]\nsubjects = [\"\"]\ntoken_ids = [\"\"]\n";
        assert_eq!(
            kinds_of(&errors_of(&policy(&["kc"], list))),
            ["empty_name", "empty_name"]
        );
    }
}
