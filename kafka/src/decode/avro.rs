//! Avro record values, read as JSON objects so the JSON decoder fills the spec's columns
//! by name. With a schema registry a value is in Confluent's wire format (a zero byte,
//! the writer schema's id as 4 big-endian bytes, the Avro body); writer schemas are
//! fetched once per id and cached. With a reader schema, a value written with another
//! compatible schema is resolved into it (Avro's rules: defaults fill missing fields,
//! extra fields are dropped, numbers are promoted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;
use sluice_core::avro::AvroSpec;
use sluice_core::error::{Error, Result};

/// How long a schema fetch may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The most the Avro decoder allocates for one value (a string, bytes or an array's
/// items): a hostile length prefix fails the record instead of reserving gigabytes.
pub const MAX_AVRO_ALLOCATION_BYTES: usize = 64 << 20;

/// Caps the Avro library's allocations for this process at
/// [`MAX_AVRO_ALLOCATION_BYTES`] (a process-wide setting that the first Avro decode
/// fixes; processes that read records call this at start).
pub fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION_BYTES);
}

/// Fails when the spec's reader schema is not a valid Avro schema (checked at submit;
/// secrets are resolved only where records are read).
pub fn check_reader_schema(spec: &AvroSpec) -> Result<()> {
    if let Some(text) = &spec.schema {
        parse_reader_schema(text)?;
    }
    Ok(())
}

fn parse_reader_schema(text: &str) -> Result<Schema> {
    Schema::parse_str(text).map_err(|e| {
        Error::spec(
            "source.kafka.avro.schema",
            format!("is not a valid Avro schema: {e}"),
        )
    })
}

/// Reads Avro values as a job's spec says.
#[derive(Debug)]
pub struct AvroReader {
    reader_schema: Option<Schema>,
    registry: Option<Registry>,
}

impl AvroReader {
    /// Parses the reader schema and prepares the registry client.
    pub fn new(spec: &AvroSpec) -> Result<AvroReader> {
        limit_allocations();
        let reader_schema = match &spec.schema {
            Some(text) => Some(parse_reader_schema(text)?),
            None => None,
        };
        let registry = match &spec.schema_registry {
            Some(registry) => {
                let auth = match registry.properties.get("basic.auth.user.info") {
                    Some(reference) => {
                        Some(sluice_core::secrets::resolve(reference).map_err(|message| {
                            Error::spec(
                                "source.kafka.avro.schema_registry.properties.basic.auth.user.info",
                                message,
                            )
                        })?)
                    }
                    None => None,
                };
                Some(Registry {
                    url: registry.url.trim_end_matches('/').to_string(),
                    auth,
                    schemas: Mutex::new(HashMap::new()),
                })
            }
            None => None,
        };
        if registry.is_none() && reader_schema.is_none() {
            return Err(Error::spec(
                "source.kafka.avro",
                "needs schema_registry or schema",
            ));
        }
        Ok(AvroReader {
            reader_schema,
            registry,
        })
    }

    /// A record value as a JSON object, or why it cannot be read.
    pub fn to_json(&self, value: &[u8]) -> Result<Vec<u8>, String> {
        let (writer, mut body) = match &self.registry {
            Some(registry) => {
                if value.len() < 5 || value[0] != 0 {
                    return Err(
                        "not in the schema registry's wire format (a zero byte, then a 4-byte schema id)"
                            .into(),
                    );
                }
                let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
                (registry.schema(id)?, &value[5..])
            }
            None => (
                Arc::new(self.reader_schema.clone().expect("checked in new")),
                value,
            ),
        };
        let decoded = apache_avro::from_avro_datum(&writer, &mut body, self.reader_schema.as_ref())
            .map_err(|e| format!("Avro: {e}"))?;
        if !body.is_empty() {
            return Err(format!("{} bytes after the Avro value", body.len()));
        }
        let json = to_json(decoded)?;
        if !json.is_object() {
            return Err("the Avro value is not a record".into());
        }
        serde_json::to_vec(&json).map_err(|e| e.to_string())
    }
}

/// A schema registry's writer schemas, fetched by id and kept.
#[derive(Debug)]
struct Registry {
    url: String,
    /// `user:password` for HTTP basic authentication.
    auth: Option<String>,
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl Registry {
    /// Writer schema `id`, from the cache or the registry. A schema that cannot be had
    /// is the record's problem (malformed), not the job's: `on_malformed` decides.
    fn schema(&self, id: u32) -> Result<Arc<Schema>, String> {
        if let Some(schema) = self.schemas.lock().expect("schema cache lock").get(&id) {
            return Ok(schema.clone());
        }
        let schema = Arc::new(self.fetch(id)?);
        self.schemas
            .lock()
            .expect("schema cache lock")
            .insert(id, schema.clone());
        Ok(schema)
    }

    fn fetch(&self, id: u32) -> Result<Schema, String> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        let client = reqwest::blocking::Client::builder()
            .timeout(REGISTRY_TIMEOUT)
            .build()
            .map_err(|e| format!("schema registry client: {e}"))?;
        let mut request = client.get(&url);
        if let Some(auth) = &self.auth {
            let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .map_err(|e| format!("fetching schema {id} from {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "schema {id}: the registry at {url} answered {status}"
            ));
        }
        let body: Json = response
            .json()
            .map_err(|e| format!("schema {id}: the registry's answer is not JSON: {e}"))?;
        if let Some(kind) = body.get("schemaType").and_then(Json::as_str) {
            if kind != "AVRO" {
                return Err(format!("schema {id} is {kind}, not Avro"));
            }
        }
        let text = body
            .get("schema")
            .and_then(Json::as_str)
            .ok_or_else(|| format!("schema {id}: the registry's answer has no schema"))?;
        Schema::parse_str(text).map_err(|e| format!("schema {id} is not valid Avro: {e}"))
    }
}

/// An Avro value as JSON, in the form the JSON decoder reads into the spec's column
/// types: timestamps and dates as numbers in their own unit, enums and UUIDs as strings,
/// unions as their branch.
fn to_json(value: Value) -> Result<Json, String> {
    Ok(match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => b.into(),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => i.into(),
        Value::Long(l)
        | Value::TimeMicros(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimestampNanos(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l)
        | Value::LocalTimestampNanos(l) => l.into(),
        Value::Float(f) => serde_json::Number::from_f64(f as f64).map_or(Json::Null, Json::Number),
        Value::Double(d) => serde_json::Number::from_f64(d).map_or(Json::Null, Json::Number),
        Value::String(s) | Value::Enum(_, s) => s.into(),
        Value::Uuid(u) => u.to_string().into(),
        Value::Bytes(b) | Value::Fixed(_, b) => String::from_utf8_lossy(&b).into_owned().into(),
        Value::Union(_, inner) => to_json(*inner)?,
        Value::Array(items) => {
            Json::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Value::Map(entries) => Json::Object(
            entries
                .into_iter()
                .map(|(k, v)| Ok((k, to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        Value::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => return Err(format!("unsupported Avro value {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Record;

    use super::*;

    const V1: &str = r#"{"type": "record", "name": "Order", "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
    const V2: &str = r#"{"type": "record", "name": "Order", "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "country", "type": "string", "default": "XX"}]}"#;

    fn body(schema: &str, country: Option<&str>) -> Vec<u8> {
        let schema = Schema::parse_str(schema).unwrap();
        let mut record = Record::new(&schema).unwrap();
        record.put("order_id", "o-1");
        record.put("amount", 2.5);
        record.put("ts", Value::TimestampMillis(1_700_000_000_000));
        if let Some(country) = country {
            record.put("country", country);
        }
        apache_avro::to_avro_datum(&schema, record).unwrap()
    }

    fn json(bytes: &[u8]) -> Json {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn an_older_writer_schema_is_resolved_into_the_reader_schema() {
        let reader = AvroReader::new(&AvroSpec {
            schema_registry: None,
            schema: Some(V2.into()),
        })
        .unwrap();
        let read = json(&reader.to_json(&body(V2, Some("DE"))).unwrap());
        assert_eq!(read["country"], "DE");
        assert_eq!(read["ts"], 1_700_000_000_000i64);
        // Bare values are read with the reader schema as the writer's: a V1 body lacks
        // the country and does not decode as V2.
        assert!(reader.to_json(&body(V1, None)).is_err());
        assert!(reader.to_json(b"\xff\xff").is_err(), "garbage is malformed");
        let mut trailing = body(V2, Some("DE"));
        trailing.push(0);
        assert!(reader
            .to_json(&trailing)
            .unwrap_err()
            .contains("after the Avro value"));
    }

    #[test]
    fn a_reader_schema_that_is_not_avro_is_refused() {
        let spec = AvroSpec {
            schema_registry: None,
            schema: Some(
                r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]}"#
                    .into(),
            ),
        };
        let message = check_reader_schema(&spec).unwrap_err().to_string();
        assert!(message.contains("source.kafka.avro.schema"), "{message}");
        assert!(AvroReader::new(&spec).is_err());
    }

    #[test]
    fn framed_values_need_the_wire_format() {
        let reader = AvroReader::new(&AvroSpec {
            schema_registry: Some(sluice_core::avro::SchemaRegistrySpec {
                url: "http://127.0.0.1:9".into(),
                properties: Default::default(),
            }),
            schema: Some(V2.into()),
        })
        .unwrap();
        let message = reader.to_json(&body(V2, Some("DE"))).unwrap_err();
        assert!(message.contains("wire format"), "{message}");
        let unreachable = reader.to_json(&[0, 0, 0, 0, 1, 2]).unwrap_err();
        assert!(unreachable.contains("fetching schema 1"), "{unreachable}");
    }
}
