//! JSON objects with unique member names, at every depth.
//!
//! RFC 7515 §5.2 and RFC 7519 §4 let a parser either refuse duplicate member names or keep
//! the last one. serde_json keeps the last; another parser on the path (the IdP's, the
//! upstream's) may keep the first, so `{"sub":"alice","sub":"admin"}` could name two callers.
//! A duplicate anywhere in a token's header or payload is therefore refused as malformed.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a part did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not JSON, or not an object.
    Invalid,
    /// A member name appears twice in one object (the name, as written).
    Duplicate(String),
}

/// Parses `bytes` as one JSON object whose objects never repeat a member name.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = UniqueMembers {
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer);
    let value = match parsed {
        Ok(value) => value,
        Err(_) => {
            return Err(duplicate
                .into_inner()
                .map_or(JsonError::Invalid, JsonError::Duplicate));
        }
    };
    deserializer.end().map_err(|_| JsonError::Invalid)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::Invalid),
    }
}

/// Builds a [`Value`] like serde_json does, but fails on a repeated member name and records
/// which one (serde errors carry text only).
#[derive(Clone, Copy)]
struct UniqueMembers<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for UniqueMembers<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueMembers<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            if map.contains_key(&name) {
                *self.duplicate.borrow_mut() = Some(name);
                return Err(de::Error::custom("duplicate member name"));
            }
            let value = access.next_value_seed(self)?;
            map.insert(name, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_serde_json() {
        let text = br#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":{"d":"e"}}"#;
        let ours = parse_object(text).unwrap();
        let theirs: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(Value::Object(ours), theirs);
    }

    #[test]
    fn refuses_repeated_names_at_any_depth() {
        assert_eq!(
            parse_object(br#"{"sub":"alice","sub":"admin"}"#),
            Err(JsonError::Duplicate("sub".into()))
        );
        assert_eq!(
            parse_object(br#"{"realm_access":{"roles":[],"roles":["admin"]}}"#),
            Err(JsonError::Duplicate("roles".into()))
        );
        assert_eq!(
            parse_object(br#"{"a":[{"x":1,"x":2}]}"#),
            Err(JsonError::Duplicate("x".into()))
        );
        // Escapes are decoded before names are compared.
        assert_eq!(
            parse_object(br#"{"exp":1,"e\u0078p":2}"#),
            Err(JsonError::Duplicate("exp".into()))
        );
        // The same name in sibling objects is fine.
        assert!(parse_object(br#"{"a":{"x":1},"b":{"x":2}}"#).is_ok());
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for text in [
            &b"[]"[..],
            b"\"x\"",
            b"{",
            b"{} {}",
            b"{}x",
            b"",
            b"{\"a\":1,}",
        ] {
            assert_eq!(parse_object(text), Err(JsonError::Invalid), "{text:?}");
        }
        assert!(parse_object(b" {} ").is_ok());
        // serde_json's nesting limit still holds.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(500), "]".repeat(500));
        assert_eq!(parse_object(deep.as_bytes()), Err(JsonError::Invalid));
    }
}
