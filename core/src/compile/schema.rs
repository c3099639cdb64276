//! The JSON Schema of the policy language, generated from the serde types of
//! [`crate::source`]. Editors read it (Taplo's `#:schema` directive); the compiler's
//! structural pass ([`super::structure`]) reads the very same schema, so the editor and the
//! compiler cannot disagree about which keys exist and what they hold.

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::{Schema, json_schema};
use serde_json::Value;

use crate::source::PolicySource;

/// The schema's title.
const TITLE: &str = "claimgate policy";

/// The JSON Schema (draft 7, which every editor reads) of a claimgate policy file.
pub fn policy_schema() -> Value {
    let generator = SchemaSettings::draft07()
        .with_transform(RecursiveTransform(drop_null))
        .into_generator();
    let mut schema = generator.into_root_schema_for::<PolicySource>();
    schema.insert("title".to_owned(), Value::String(TITLE.to_owned()));
    schema.to_value()
}

/// [`policy_schema`] as the repository ships it (`schema/claimgate-policy.schema.json`):
/// pretty-printed, with a final newline.
pub fn policy_schema_json() -> String {
    let pretty = serde_json::to_string_pretty(&policy_schema()).unwrap_or_default();
    format!("{pretty}\n")
}

/// TOML has no null: an optional key is one left out, so `null` is never a value to offer.
/// Removes `"null"` from `type` lists and `{"type": "null"}` from `anyOf` / `oneOf`.
fn drop_null(schema: &mut Schema) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            object.insert("type".to_owned(), only);
        }
    }
    for key in ["anyOf", "oneOf"] {
        let Some(Value::Array(branches)) = object.get_mut(key) else {
            continue;
        };
        let null = json_schema!({ "type": "null" });
        branches.retain(|branch| branch != null.as_value());
        if let [only] = branches.as_slice() {
            let only = only.clone();
            object.remove(key);
            match only {
                // Draft 7 ignores the siblings of a `$ref` (the description, the default).
                Value::Object(fields) if fields.contains_key("$ref") => {
                    object.insert(
                        "allOf".to_owned(),
                        Value::Array(vec![Value::Object(fields)]),
                    );
                }
                Value::Object(fields) => {
                    for (field, value) in fields {
                        object.entry(field).or_insert(value);
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_schema_is_the_generated_one() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schema/claimgate-policy.schema.json"
        );
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            shipped == policy_schema_json(),
            "{path} is not the schema the source types generate; regenerate it: \
             cargo run -p policy-compiler -- schema > schema/claimgate-policy.schema.json"
        );
    }

    #[test]
    fn the_schema_has_no_null_and_documents_every_field() {
        let schema = policy_schema();
        let text = schema.to_string();
        assert!(!text.contains("\"null\""), "{text}");
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
        assert_eq!(
            schema["properties"]["version"]["description"],
            "Language version; must be 1."
        );
        let rule = &schema["definitions"]["RuleSource"];
        assert_eq!(rule["required"], serde_json::json!(["name"]));
        assert_eq!(
            rule["properties"]["allow"]["allOf"][0]["$ref"],
            "#/definitions/PrincipalSchema"
        );
        let principal = &schema["definitions"]["PrincipalSchema"];
        assert_eq!(principal["x-claimgate-kind"], "bad_principal");
        assert_eq!(principal["anyOf"].as_array().map(Vec::len), Some(2));
        let jwks = &schema["definitions"]["JwksSource"]["properties"];
        assert!(jwks["refresh"]["pattern"].is_string(), "{jwks}");
    }
}
