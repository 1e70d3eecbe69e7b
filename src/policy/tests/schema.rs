//! The committed JSON Schema lists exactly the keys the parser accepts.

use crate::policy::parse::{
    RawApprovers, RawBreakGlass, RawMatch, RawPolicy, RawPrincipals, RawReason, RawRule, RawTicket,
};
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::Value;
use std::cell::Cell;
use std::collections::BTreeSet;

const SCHEMA: &str = include_str!("../../../schemas/policy.schema.json");

/// The keys a derived struct accepts, as serde's derive hands them to
/// `deserialize_struct`.
fn keys_of<T: for<'de> Deserialize<'de>>() -> BTreeSet<&'static str> {
    struct Capture<'a>(&'a Cell<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let fields = Cell::new(&[][..]);
    let _ = T::deserialize(Capture(&fields));
    fields.get().iter().copied().collect()
}

fn properties(schema: &Value) -> BTreeSet<&str> {
    schema["properties"].as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

#[test]
fn the_json_schema_is_json_and_lists_the_keys_the_parser_accepts() {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let defs = &schema["$defs"];
    for (name, object, keys) in [
        ("policy", &schema, keys_of::<RawPolicy>()),
        ("rule", &defs["rule"], keys_of::<RawRule>()),
        ("match", &defs["match"], keys_of::<RawMatch>()),
        ("principals", &defs["principals"], keys_of::<RawPrincipals>()),
        ("approvers", &defs["approvers"], keys_of::<RawApprovers>()),
        ("reason", &defs["reason"], keys_of::<RawReason>()),
        ("ticket", &defs["ticket"], keys_of::<RawTicket>()),
        ("breakGlass", &defs["breakGlass"], keys_of::<RawBreakGlass>()),
    ] {
        assert!(!keys.is_empty(), "{name}: no keys captured");
        assert_eq!(properties(object), keys, "{name}");
        assert_eq!(object["additionalProperties"], false, "{name} must refuse unknown keys");
    }
    assert_eq!(keys_of::<RawRule>().len(), 11);
    // Every reference points at a definition.
    let text = SCHEMA.replace(' ', "");
    for reference in text.split("\"$ref\":\"#/$defs/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(defs.get(name).is_some(), "dangling $ref to {name}");
    }
}

#[test]
fn the_json_schema_lists_the_kinds_the_parser_accepts() {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let kinds: BTreeSet<String> =
        schema["$defs"]["kind"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let expected: BTreeSet<String> = crate::domain::types::Kind::ALL
        .iter()
        .flat_map(|k| [k.resource().to_string(), format!("{}.{}", k.resource(), k.group())])
        .collect();
    assert_eq!(kinds, expected);
}
