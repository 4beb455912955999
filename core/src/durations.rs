//! Durations in specs (`30s`, `5m`, `500ms`), parsed into milliseconds with errors that
//! name the field.

use crate::error::{Error, Result};

/// A duration above zero in milliseconds; `field` names it in errors.
pub(crate) fn positive_ms(field: &str, text: &str) -> Result<i64> {
    match duration_ms(field, text, "10s, 1m")? {
        0 => Err(Error::spec(field, "must be above zero")),
        ms => Ok(ms),
    }
}

/// A duration in milliseconds; `field` names it and `examples` show the syntax in errors.
pub(crate) fn duration_ms(field: &str, text: &str, examples: &str) -> Result<i64> {
    humantime::parse_duration(text)
        .map(|d| d.as_millis() as i64)
        .map_err(|e| {
            Error::spec(
                field,
                format!("{text:?} is not a duration ({e}); e.g. {examples}"),
            )
        })
}
