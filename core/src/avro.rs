//! `source.kafka.avro`: how Avro record values are read. With a schema registry, values
//! are in Confluent's wire format (a zero byte, the writer schema's 4-byte id, the Avro
//! body) and writer schemas are fetched by id; with an inline `schema` only, values are
//! bare Avro bodies written with that schema. The decoding itself is in the kafka crate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `source.kafka.avro`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvroSpec {
    /// A Confluent-compatible schema registry the writer schemas are fetched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistrySpec>,
    /// The reader schema (Avro's JSON form): records written with another compatible
    /// schema are resolved into it (defaults fill fields the writer lacks). Without a
    /// registry it is also the schema the values were written with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// `source.kafka.avro.schema_registry`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistrySpec {
    /// e.g. `http://schema-registry:8081` or `https://…`.
    pub url: String,
    /// `basic.auth.user.info` (`user:password`, as a secret reference such as
    /// `${env:REGISTRY_AUTH}`) for a registry that asks for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// The registry properties Sluice knows.
pub const REGISTRY_PROPERTIES: [&str; 1] = ["basic.auth.user.info"];

impl AvroSpec {
    /// Checks the settings: a registry or a schema, a well-formed URL, known properties
    /// with secrets only as references, a schema that is JSON.
    pub fn validate(&self) -> Result<()> {
        if self.schema_registry.is_none() && self.schema.is_none() {
            return Err(Error::spec(
                "source.kafka.avro",
                "needs schema_registry (values in Confluent's wire format) or schema (bare Avro values), or both",
            ));
        }
        if let Some(registry) = &self.schema_registry {
            let url = registry.url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::spec(
                    "source.kafka.avro.schema_registry.url",
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            for (name, value) in &registry.properties {
                let field = format!("source.kafka.avro.schema_registry.properties.{name}");
                if !REGISTRY_PROPERTIES.contains(&name.as_str()) {
                    return Err(Error::spec(
                        field,
                        format!("unknown; known: {}", REGISTRY_PROPERTIES.join(", ")),
                    ));
                }
                if !crate::secrets::is_reference(value) {
                    return Err(Error::spec(
                        field,
                        "holds a secret: refer to it as ${env:NAME} or ${file:/path}",
                    ));
                }
                crate::secrets::check(value).map_err(|message| Error::spec(field, message))?;
            }
        }
        if let Some(schema) = &self.schema {
            serde_json::from_str::<serde_json::Value>(schema).map_err(|e| {
                Error::spec(
                    "source.kafka.avro.schema",
                    format!("is not an Avro schema in JSON: {e}"),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_or_a_schema_is_needed_and_secrets_are_references() {
        assert!(AvroSpec::default().validate().is_err());
        let registry = |url: &str, auth: Option<&str>| AvroSpec {
            schema_registry: Some(SchemaRegistrySpec {
                url: url.into(),
                properties: auth
                    .map(|a| BTreeMap::from([("basic.auth.user.info".to_string(), a.to_string())]))
                    .unwrap_or_default(),
            }),
            schema: None,
        };
        assert!(registry("http://registry:8081", None).validate().is_ok());
        assert!(registry("https://r", Some("${env:AUTH}"))
            .validate()
            .is_ok());
        for (bad, why) in [
            (registry("registry:8081", None), "not an http(s) URL"),
            (
                registry("http://r", Some("user:password")),
                "holds a secret",
            ),
            (
                AvroSpec {
                    schema: Some("{not json".into()),
                    ..Default::default()
                },
                "not an Avro schema",
            ),
        ] {
            let message = bad.validate().unwrap_err().to_string();
            assert!(message.contains(why), "{message}");
        }
    }
}
