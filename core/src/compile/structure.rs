//! The structural pass: the parsed (spanned) TOML document checked against the policy's JSON
//! Schema ([`super::schema`]) before serde sees it. serde stops at the first unknown key or
//! wrong type; this pass reports every one, each at its place, with "did you mean" for names
//! and a hint for a key written under the wrong table header. It prunes what it reported
//! so the serde types can still be read from the rest and the semantic passes report their
//! errors too. A rule or an issuer with a structural problem is left out whole (its
//! semantic checks would only report what follows from the removal); the other rules and
//! issuers are still checked.
//!
//! Reading the same schema the editor reads means the two cannot disagree. The pass knows
//! the part of JSON Schema that `schemars` emits for the source types: `$ref`, `type`,
//! `enum`/`const`, `properties`, `additionalProperties`, `required`, `items`, `anyOf`,
//! `oneOf` and `allOf`. Value constraints (patterns, ranges) are left to the semantic passes,
//! whose messages are more precise.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::{Map, Value};
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::diagnostics::Context;
use super::schema_facts::{SchemaFacts, ValueKind};
use super::suggest;

/// One step from the top of the document to a value.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// A problem found, reported once the pass is over (in the order of the file).
#[derive(Debug)]
struct Problem {
    kind: &'static str,
    span: Range<usize>,
    message: String,
    hint: String,
}

/// Checks `document` against `schema`, reports every problem to `cx` and removes what is
/// wrong from `document`. Returns whether what is left is still a policy serde can read
/// (`false` when the top level lacks a required key).
pub(super) fn check(
    cx: &mut Context<'_>,
    text: &str,
    schema: &Value,
    document: &mut Spanned<DeTable<'_>>,
) -> bool {
    let facts = SchemaFacts::new(schema);
    let mut walker = Walker {
        facts: &facts,
        text,
        problems: Vec::new(),
        tables: Vec::new(),
        kind: None,
        others: Vec::new(),
    };
    let span = document.span();
    let mut path = Vec::new();
    walker.table(schema, document.get_mut(), &span, &mut path);
    let readable = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .all(|name| document.get_ref().contains_key(name));
    walker.problems.sort_by_key(|p| p.span.start);
    for problem in walker.problems {
        cx.error(problem.kind, &problem.span, problem.message, problem.hint);
    }
    readable
}

struct Walker<'s> {
    /// What each node of the schema means, worked out once.
    facts: &'s SchemaFacts<'s>,
    text: &'s str,
    problems: Vec<Problem>,
    /// The tables around the value being checked, outermost first: their schemas and how
    /// long the path is at their keys (their paths are prefixes of the current one).
    tables: Vec<(&'s Map<String, Value>, usize)>,
    /// The kind problems are reported as here (`x-claimgate-kind` of an enclosing schema),
    /// e.g. `bad_principal` inside `allow` / `deny`.
    kind: Option<&'static str>,
    /// The other forms the value could take (of another type), while checking one form:
    /// described only when a problem names them (most values have none).
    others: Vec<&'s Value>,
}

impl<'s> Walker<'s> {
    fn resolve(&self, schema: &'s Value) -> &'s Value {
        self.facts.resolve(schema)
    }

    fn words(&self, schema: &'s Value) -> Option<Cow<'s, [&'s str]>> {
        self.facts.words(schema)
    }

    fn accepts(&self, schema: &'s Value, value: &DeValue<'_>) -> bool {
        self.facts.accepts(schema, ValueKind::of(value))
    }

    /// What `schema` expects, for people: "a string", "one of `a`, `b`", "an array of strings".
    fn expected(&self, schema: &'s Value) -> String {
        let schema = self.resolve(schema);
        if let Some(words) = self.words(schema) {
            return format!("one of {}", suggest::list(words.iter().copied()));
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(branches) = schema.get(key).and_then(Value::as_array) {
                let all: Vec<String> = branches.iter().map(|b| self.expected(b)).collect();
                return all.join(" or ");
            }
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => "a string".to_owned(),
            Some("integer") => "an integer".to_owned(),
            Some("number") => "a number".to_owned(),
            Some("boolean") => "`true` or `false`".to_owned(),
            Some("array") => match schema.get("items") {
                Some(items) => format!("an array of {}", self.plural(items)),
                None => "an array".to_owned(),
            },
            _ => "a table".to_owned(),
        }
    }

    /// `, or <what the other forms expect>` for a problem message, or nothing.
    fn other_forms(&self) -> String {
        if self.others.is_empty() {
            return String::new();
        }
        let others: Vec<String> = self.others.iter().map(|b| self.expected(b)).collect();
        format!(", or {}", others.join(" or "))
    }

    fn plural(&self, schema: &'s Value) -> &'static str {
        let schema = self.resolve(schema);
        if self.words(schema).is_some() {
            return "names";
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => "strings",
            Some("integer" | "number") => "numbers",
            Some("boolean") => "booleans",
            Some("array") => "arrays",
            _ => "tables",
        }
    }

    fn found(value: &DeValue<'_>) -> &'static str {
        match value {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date-time",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        }
    }

    /// Checks one value; prunes what is wrong inside it. `false` if the value itself is
    /// unusable (and should be removed by its container).
    fn value(
        &mut self,
        schema: &'s Value,
        value: &mut Spanned<DeValue<'_>>,
        path: &mut Vec<Step>,
    ) -> bool {
        let described = schema;
        let schema = self.resolve(schema);
        if let Value::Bool(accepts) = schema {
            return *accepts;
        }
        let outer = self.kind;
        if let Some(kind) = self.facts.kind(schema) {
            self.kind = Some(kind);
        }
        let valid = self.checked_value(described, schema, value, path);
        self.kind = outer;
        valid
    }

    /// [`Walker::value`] once `schema` is resolved.
    fn checked_value(
        &mut self,
        described: &'s Value,
        schema: &'s Value,
        value: &mut Spanned<DeValue<'_>>,
        path: &mut Vec<Step>,
    ) -> bool {
        let span = value.span();
        if !self.accepts(schema, value.get_ref()) {
            let expected = self.expected(schema);
            let found = Self::found(value.get_ref());
            let description = described
                .get("description")
                .or_else(|| schema.get("description"))
                .and_then(Value::as_str);
            self.problems.push(Problem {
                kind: self.kind.unwrap_or("wrong_type"),
                span,
                message: format!("{} must be {expected}, not {found}", subject(path)),
                hint: match (description, last_key(path)) {
                    (Some(text), Some(key)) => format!("expected {expected}; `{key}`: {text}"),
                    _ => format!("expected {expected}"),
                },
            });
            return false;
        }
        if let Some(words) = self.words(schema) {
            if let DeValue::String(word) = value.get_ref()
                && !words.contains(&&**word)
            {
                self.problems.push(Problem {
                    kind: self.kind.unwrap_or("bad_value"),
                    span,
                    message: format!(
                        "`{word}` is not a value of {}: write one of {}{}",
                        subject(path),
                        suggest::list(words.iter().copied()),
                        self.other_forms()
                    ),
                    hint: suggest::hint(word, words.iter().copied(), "values"),
                });
                return false;
            }
            return true;
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = schema.get(key).and_then(Value::as_array) {
                return self.one_of(branches, value, path);
            }
        }
        let mut valid = true;
        if let Some(branches) = schema.get("allOf").and_then(Value::as_array) {
            for branch in branches {
                valid &= self.value(branch, value, path);
            }
        }
        valid
            && match value.get_mut() {
                DeValue::Table(table) => self.table(schema, table, &span, path),
                DeValue::Array(array) => self.array(schema, array, path),
                _ => true,
            }
    }

    /// `anyOf` / `oneOf`: the branch the value's type fits; with several, the first that
    /// passes (tried on a copy), else the first that fits, for its precise problems.
    fn one_of(
        &mut self,
        branches: &'s [Value],
        value: &mut Spanned<DeValue<'_>>,
        path: &mut Vec<Step>,
    ) -> bool {
        let fitting: Vec<&'s Value> = branches
            .iter()
            .filter(|b| self.accepts(b, value.get_ref()))
            .collect();
        if fitting.len() > 1 {
            for branch in &fitting {
                let mut trial = Walker {
                    facts: self.facts,
                    text: self.text,
                    problems: Vec::new(),
                    tables: self.tables.clone(),
                    kind: self.kind,
                    others: Vec::new(),
                };
                let mut copy = value.clone();
                if trial.value(branch, &mut copy, &mut path.clone()) && trial.problems.is_empty() {
                    return self.value(branch, value, path);
                }
            }
        }
        let Some(branch) = fitting.first() else {
            return false;
        };
        // The forms of another type (`allow` is also a table), named in the problem.
        let others = branches.iter().filter(|b| !fitting.contains(b)).collect();
        let outer = std::mem::replace(&mut self.others, others);
        let valid = self.value(branch, value, path);
        self.others = outer;
        valid
    }

    fn array(&mut self, schema: &'s Value, array: &mut DeArray<'_>, path: &mut Vec<Step>) -> bool {
        let Some(items) = schema.get("items") else {
            return true;
        };
        let mut keep = Vec::with_capacity(array.len());
        let mut valid = true;
        for (index, item) in array.iter_mut().enumerate() {
            path.push(Step::Index(index));
            let kept = self.value(items, item, path);
            path.pop();
            // A table (a rule) is left out alone; a wrong entry in a list of names makes
            // the whole list (and what holds it) wrong.
            valid &= kept || matches!(item.get_ref(), DeValue::Table(_));
            keep.push(kept);
        }
        if keep.contains(&false) {
            let all = std::mem::replace(array, DeArray::new());
            *array = all
                .into_iter()
                .zip(keep)
                .filter_map(|(item, kept)| kept.then_some(item))
                .collect();
        }
        valid
    }

    fn table(
        &mut self,
        schema: &'s Value,
        table: &mut DeTable<'_>,
        span: &Range<usize>,
        path: &mut Vec<Step>,
    ) -> bool {
        let Some(object) = schema.as_object() else {
            return true;
        };
        let properties = object.get("properties").and_then(Value::as_object);
        let additional = object.get("additionalProperties");
        let header = self.is_header(span);
        let mut removed = Vec::new();
        let mut valid = true;
        // Unknown keys: a required key missing is not reported again when one of them is
        // its misspelling (the "did you mean" said it).
        let mut misspelt = Vec::new();
        for (key, value) in table.iter_mut() {
            let name: &str = key.get_ref();
            let mut unknown = false;
            path.push(Step::Key(name.to_owned()));
            self.tables.push((object, path.len()));
            // A wrong field makes the table wrong; a wrong entry of a map (an issuer of
            // `[issuers]`) is left out alone.
            let (kept, entry) = match (properties.and_then(|p| p.get(name)), additional) {
                (Some(field), _) => (self.value(field, value, path), false),
                (None, Some(Value::Bool(false))) => {
                    self.unknown_field(properties, name, key.span(), header, path);
                    unknown = true;
                    (false, false)
                }
                (None, Some(extra)) => (self.value(extra, value, path), true),
                (None, None) => (true, false),
            };
            self.tables.pop();
            path.pop();
            if !kept {
                removed.push(name.to_owned());
                valid &= entry;
            }
            if unknown {
                misspelt.push(name.to_owned());
            }
        }
        for name in &removed {
            table.remove(name.as_str());
        }
        let required = object.get("required").and_then(Value::as_array);
        for name in required.into_iter().flatten().filter_map(Value::as_str) {
            if table.contains_key(name) {
                continue;
            }
            valid = false;
            let reported = removed.iter().any(|r| r == name)
                || misspelt
                    .iter()
                    .any(|m| suggest::closest(m, [name]).is_some());
            if !reported {
                let description = properties
                    .and_then(|p| p.get(name))
                    .and_then(|p| p.get("description"))
                    .and_then(Value::as_str)
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                self.problems.push(Problem {
                    kind: self.kind.unwrap_or("missing_field"),
                    span: span.clone(),
                    message: format!("{} has no `{name}`, which is required", place(path)),
                    hint: format!("add `{name} = …`{description}"),
                });
            }
        }
        valid
    }

    /// Whether the table at `span` was opened by a `[header]` (not written inline or
    /// dotted): only there can a key land in it by mistake.
    fn is_header(&self, span: &Range<usize>) -> bool {
        self.text
            .get(span.start..)
            .is_some_and(|rest| rest.starts_with('['))
    }

    /// An unknown key `name` in the table at `path` (its last step is the key itself).
    fn unknown_field(
        &mut self,
        properties: Option<&'s Map<String, Value>>,
        name: &str,
        span: Range<usize>,
        header: bool,
        path: &[Step],
    ) {
        let table_path = path.split_last().map_or(&[][..], |(_, rest)| rest);
        let fields: Vec<&str> = properties
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let misplaced = if header {
            // The innermost enclosing table that has such a key. The innermost `tables`
            // entry is the table itself.
            self.tables
                .iter()
                .rev()
                .skip(1)
                .find(|(schema, _)| {
                    schema
                        .get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|p| p.contains_key(name))
                })
                .map(|(_, depth)| {
                    path.get(..depth.saturating_sub(1))
                        .unwrap_or_default()
                        .to_vec()
                })
        } else {
            None
        };
        let this = place(table_path);
        let hint = match misplaced {
            Some(owner) if owner.is_empty() => format!(
                "`{name}` is a top-level key: keys after {this} belong to that table; move `{name} = …` above the first table header"
            ),
            Some(owner) => format!(
                "`{name}` is a key of {}: keys after {this} belong to that table; move `{name} = …` up into {}, above {this}",
                place(&owner),
                place(&owner)
            ),
            None => suggest::hint(name, fields.iter().copied(), "its keys are"),
        };
        self.problems.push(Problem {
            kind: self.kind.unwrap_or("unknown_field"),
            span,
            message: format!("unknown field `{name}` in {this}"),
            hint,
        });
    }
}

/// The last key on the path (the field a value belongs to).
fn last_key(path: &[Step]) -> Option<&str> {
    path.iter().rev().find_map(|step| match step {
        Step::Key(key) => Some(key.as_str()),
        Step::Index(_) => None,
    })
}

/// What a value is, for people: "`issuer`", "entry 2 of `algorithms`".
fn subject(path: &[Step]) -> String {
    match path.split_last() {
        Some((Step::Index(index), rest)) => match last_key(rest) {
            Some(key) => format!("entry {} of `{key}`", index + 1),
            None => format!("entry {}", index + 1),
        },
        Some((Step::Key(key), _)) => format!("`{key}`"),
        None => "the policy".to_owned(),
    }
}

/// A table as its header names it: `[token]`, `[issuers.keycloak.jwks]`, `[[rules]]` (with
/// its position), or "the top level".
fn place(path: &[Step]) -> String {
    let keys: Vec<String> = path
        .iter()
        .filter_map(|step| match step {
            Step::Key(key) => Some(quote_key(key)),
            Step::Index(_) => None,
        })
        .collect();
    match path.last() {
        None => "the top level".to_owned(),
        Some(Step::Index(index)) => format!("`[[{}]]` #{}", keys.join("."), index + 1),
        Some(Step::Key(_)) => format!("`[{}]`", keys.join(".")),
    }
}

/// A key as TOML writes it: bare if it can be, quoted otherwise.
fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_owned()
    } else {
        format!("\"{key}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors_of, kinds_of};

    fn placed(text: &str) -> Vec<(&'static str, usize, usize)> {
        errors_of(text)
            .iter()
            .map(|e| (e.kind, e.line, e.column))
            .collect()
    }

    #[test]
    fn a_rule_with_a_structural_problem_is_left_out_whole_and_the_others_still_checked() {
        // `algorithms = [3]` would leave an empty list (`no_algorithm`), a wrong `allow` no
        // principal (`no_principal`): neither follow-on is reported.
        let text = "version = 1\n[issuers.a]\nissuer = \"https://a\"\naudiences = [\"api\"]\nalgorithms = [3]\n[[rules]]\nname = \"r\"\nallow = 7\n[[rules]]\nname = \"s\"\npaths = [\"s\"]\nallow = { issuers = [\"a\"] }\n";
        assert_eq!(
            placed(text),
            [
                ("wrong_type", 5, 15),
                ("bad_principal", 8, 9),
                ("bad_path", 11, 10)
            ]
        );
    }

    #[test]
    fn missing_keys_and_every_syntax_error_are_reported() {
        let text = "version = 1\n[issuers.a]\naudiences = [\"api\"]\n";
        assert_eq!(
            placed(text),
            [("missing_field", 2, 1), ("missing_field", 2, 1)]
        );
        let errors = errors_of("version = 1\n[issuers.a]\nissuer = \"https://a\"\n");
        assert!(errors[0].message.contains("`algorithms`"), "{errors:#?}");
        let syntax = errors_of("version = = 1\nname = \"x\nmode = [\n");
        assert!(syntax.len() >= 2, "{syntax:#?}");
        assert!(kinds_of(&syntax).iter().all(|k| *k == "syntax"));
    }

    #[test]
    fn keys_of_inline_tables_are_not_taken_for_misplaced_ones() {
        let text = "version = 1\n[[rules]]\nname = \"r\"\nallow = { default = \"allow\" }\n";
        let errors = errors_of(text);
        assert_eq!(kinds_of(&errors), ["bad_principal"]);
        assert!(
            !errors[0].hint.as_deref().unwrap().contains("top-level"),
            "{errors:#?}"
        );
        // A dotted key names a table without a header too.
        let dotted = "version = 1\n[issuers.a]\nissuer = \"https://a\"\nalgorithms = [\"RS256\"]\njwks.uri = \"https://a/certs\"\njwks.version = 1\n";
        let errors = errors_of(dotted);
        assert_eq!(kinds_of(&errors), ["unknown_field"]);
        assert!(!errors[0].hint.as_deref().unwrap().contains("top-level"));
    }
}
