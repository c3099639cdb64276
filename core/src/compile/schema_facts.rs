//! What the structural pass ([`super::structure`]) asks of a schema node — where its `$ref`s
//! lead, which words it allows, which kinds of TOML value it accepts, the diagnostic kind it
//! names — worked out once per compilation. The schema has a few hundred nodes; a policy of
//! 100,000 rules asks about them millions of times, and following a `$ref` through
//! `Value::pointer` allocates every time.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;
use toml::de::DeValue;

/// A keyword of the schema naming the diagnostic kind of the problems found under it.
pub(super) const KIND_KEYWORD: &str = "x-claimgate-kind";

/// The kinds a schema may name with [`KIND_KEYWORD`] (diagnostic kinds are static).
const SCHEMA_KINDS: [&str; 1] = ["bad_principal"];

/// `$ref`s followed at most this many times in a row (a cycle of references ends there).
const REF_LIMIT: usize = 16;

/// The kinds of TOML value, as far as a schema can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValueKind {
    String,
    Integer,
    Float,
    Boolean,
    Datetime,
    Array,
    Table,
}

impl ValueKind {
    const ALL: [ValueKind; 7] = [
        ValueKind::String,
        ValueKind::Integer,
        ValueKind::Float,
        ValueKind::Boolean,
        ValueKind::Datetime,
        ValueKind::Array,
        ValueKind::Table,
    ];

    pub(super) fn of(value: &DeValue<'_>) -> ValueKind {
        match value {
            DeValue::String(_) => ValueKind::String,
            DeValue::Integer(_) => ValueKind::Integer,
            DeValue::Float(_) => ValueKind::Float,
            DeValue::Boolean(_) => ValueKind::Boolean,
            DeValue::Datetime(_) => ValueKind::Datetime,
            DeValue::Array(_) => ValueKind::Array,
            DeValue::Table(_) => ValueKind::Table,
        }
    }

    /// This kind's bit in [`NodeFacts::accepts`].
    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The JSON types a TOML value of this kind can stand for.
    fn json_types(self) -> &'static [&'static str] {
        match self {
            ValueKind::String => &["string"],
            ValueKind::Integer => &["integer", "number"],
            ValueKind::Float => &["number"],
            ValueKind::Boolean => &["boolean"],
            ValueKind::Array => &["array"],
            ValueKind::Table => &["object"],
            ValueKind::Datetime => &[],
        }
    }
}

/// The answers for one schema node.
#[derive(Debug, Clone)]
struct NodeFacts<'s> {
    resolved: &'s Value,
    words: Option<Vec<&'s str>>,
    kind: Option<&'static str>,
    /// Whether the node accepts a value of each [`ValueKind`]: bit `1 << kind`.
    accepts: u8,
}

/// The answers for every node of one schema, by the node's address (the schema is borrowed
/// for as long as this lives, so addresses stay put).
pub(super) struct SchemaFacts<'s> {
    root: &'s Value,
    nodes: HashMap<*const Value, NodeFacts<'s>>,
}

impl<'s> SchemaFacts<'s> {
    /// Works out the answers for every node of `root`.
    pub(super) fn new(root: &'s Value) -> SchemaFacts<'s> {
        let mut facts = SchemaFacts {
            root,
            nodes: HashMap::new(),
        };
        let mut pending = vec![root];
        while let Some(node) = pending.pop() {
            match node {
                Value::Object(fields) => pending.extend(fields.values()),
                Value::Array(items) => pending.extend(items),
                _ => {}
            }
            let answers = facts.work_out(node);
            facts.nodes.insert(node, answers);
        }
        facts
    }

    /// The node `schema`'s `$ref`s lead to (itself when it has none).
    pub(super) fn resolve(&self, schema: &'s Value) -> &'s Value {
        match self.nodes.get(&std::ptr::from_ref(schema)) {
            Some(facts) => facts.resolved,
            None => self.follow_refs(schema),
        }
    }

    /// The words a schema allows, if it is a choice of strings (`enum`, `const`, or a
    /// `oneOf`/`anyOf` of those, as schemars writes documented enum variants).
    pub(super) fn words(&self, schema: &'s Value) -> Option<Cow<'_, [&'s str]>> {
        match self.nodes.get(&std::ptr::from_ref(schema)) {
            Some(facts) => facts.words.as_deref().map(Cow::Borrowed),
            None => self.words_of(schema).map(Cow::Owned),
        }
    }

    /// The `x-claimgate-kind` of a schema, or of the one schema it wraps (`allOf: [$ref]`).
    /// Only the kinds in [`SCHEMA_KINDS`] are taken.
    pub(super) fn kind(&self, schema: &'s Value) -> Option<&'static str> {
        match self.nodes.get(&std::ptr::from_ref(schema)) {
            Some(facts) => facts.kind,
            None => self.kind_of(schema),
        }
    }

    /// Whether `schema` can accept a value of this kind at all (its type, not its content).
    pub(super) fn accepts(&self, schema: &'s Value, value: ValueKind) -> bool {
        match self.nodes.get(&std::ptr::from_ref(schema)) {
            Some(facts) => facts.accepts & value.bit() != 0,
            None => self.accepts_kind(schema, value),
        }
    }

    fn work_out(&self, node: &'s Value) -> NodeFacts<'s> {
        NodeFacts {
            resolved: self.follow_refs(node),
            words: self.words_of(node),
            kind: self.kind_of(node),
            accepts: ValueKind::ALL
                .into_iter()
                .filter(|kind| self.accepts_kind(node, *kind))
                .fold(0, |bits, kind| bits | kind.bit()),
        }
    }

    fn follow_refs(&self, mut schema: &'s Value) -> &'s Value {
        for _ in 0..REF_LIMIT {
            let target = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|pointer| self.root.pointer(pointer));
            match target {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    fn kind_of(&self, schema: &'s Value) -> Option<&'static str> {
        let own = schema.get(KIND_KEYWORD).and_then(Value::as_str);
        let wrapped = || match schema
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some([only]) => self
                .follow_refs(only)
                .get(KIND_KEYWORD)
                .and_then(Value::as_str),
            _ => None,
        };
        let named = own.or_else(wrapped)?;
        SCHEMA_KINDS.iter().copied().find(|kind| *kind == named)
    }

    fn words_of(&self, schema: &'s Value) -> Option<Vec<&'s str>> {
        let schema = self.follow_refs(schema);
        if let Some(list) = schema.get("enum").and_then(Value::as_array) {
            return list.iter().map(Value::as_str).collect();
        }
        if let Some(word) = schema.get("const") {
            return word.as_str().map(|w| vec![w]);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = schema.get(key).and_then(Value::as_array) {
                let mut all = Vec::new();
                for branch in branches {
                    all.extend(self.words_of(branch)?);
                }
                return Some(all);
            }
        }
        None
    }

    fn accepts_kind(&self, schema: &'s Value, value: ValueKind) -> bool {
        let schema = self.follow_refs(schema);
        let types = value.json_types();
        if let Value::Bool(accepts) = schema {
            return *accepts;
        }
        if let Some(declared) = schema.get("type") {
            return match declared {
                Value::String(t) => types.contains(&t.as_str()),
                Value::Array(list) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|t| types.contains(&t)),
                _ => true,
            };
        }
        if let Some(words) = self.words_of(schema) {
            return !words.is_empty() && value == ValueKind::String;
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = schema.get(key).and_then(Value::as_array) {
                return branches.iter().any(|b| self.accepts_kind(b, value));
            }
        }
        if let Some(branches) = schema.get("allOf").and_then(Value::as_array) {
            return branches.iter().all(|b| self.accepts_kind(b, value));
        }
        if schema.get("properties").is_some() || schema.get("additionalProperties").is_some() {
            return value == ValueKind::Table;
        }
        true
    }
}
