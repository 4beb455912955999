//! `sink.iceberg.partition_by`: how a new sink table is partitioned, e.g.
//! `[day(ts), bucket(16, account_id), country]`. Parsed at submit; the Iceberg crate turns
//! it into the table's partition spec.

use std::fmt;

use crate::error::{Error, Result};

/// One partition field: a source column and its transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    pub column: String,
    pub transform: PartitionTransform,
}

/// The Iceberg transforms a partition field may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTransform {
    Identity,
    Year,
    Month,
    Day,
    Hour,
    /// Hash into this many buckets.
    Bucket(u32),
    /// Strings cut to this many characters, numbers rounded down to a multiple of it.
    Truncate(u32),
}

impl PartitionField {
    /// Parses `column`, `year(c)`, `month(c)`, `day(c)`, `hour(c)`, `bucket(N, c)` or
    /// `truncate(W, c)`; the error says what is accepted.
    pub fn parse(text: &str) -> Result<PartitionField> {
        let field = "sink.iceberg.partition_by";
        let usage =
            "use a column, or year(c), month(c), day(c), hour(c), bucket(N, c), truncate(W, c)";
        let text = text.trim();
        let Some(open) = text.find('(') else {
            return match is_identifier(text) {
                true => Ok(PartitionField {
                    column: text.to_string(),
                    transform: PartitionTransform::Identity,
                }),
                false => Err(Error::spec(field, format!("{text:?}: {usage}"))),
            };
        };
        let (name, rest) = text.split_at(open);
        let Some(args) = rest[1..].strip_suffix(')') else {
            return Err(Error::spec(field, format!("{text:?}: a ')' is missing")));
        };
        let args: Vec<&str> = args.split(',').map(str::trim).collect();
        let width = |n: &str| match n.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::spec(
                field,
                format!("{text:?}: {n:?} is not a count above zero"),
            )),
        };
        let (transform, column) = match (name.trim().to_ascii_lowercase().as_str(), &args[..]) {
            ("year", [c]) => (PartitionTransform::Year, *c),
            ("month", [c]) => (PartitionTransform::Month, *c),
            ("day", [c]) => (PartitionTransform::Day, *c),
            ("hour", [c]) => (PartitionTransform::Hour, *c),
            ("bucket", [n, c]) => (PartitionTransform::Bucket(width(n)?), *c),
            ("truncate", [w, c]) => (PartitionTransform::Truncate(width(w)?), *c),
            _ => return Err(Error::spec(field, format!("{text:?}: {usage}"))),
        };
        if !is_identifier(column) {
            return Err(Error::spec(
                field,
                format!("{text:?}: {column:?} is not a column name"),
            ));
        }
        Ok(PartitionField {
            column: column.to_string(),
            transform,
        })
    }

    /// The partition field's name, as Iceberg's own writers name them: the column for
    /// identity, else `column_transform` (e.g. `ts_day`, `account_id_bucket_16`).
    pub fn name(&self) -> String {
        let column = &self.column;
        match self.transform {
            PartitionTransform::Identity => column.clone(),
            PartitionTransform::Year => format!("{column}_year"),
            PartitionTransform::Month => format!("{column}_month"),
            PartitionTransform::Day => format!("{column}_day"),
            PartitionTransform::Hour => format!("{column}_hour"),
            PartitionTransform::Bucket(n) => format!("{column}_bucket_{n}"),
            PartitionTransform::Truncate(w) => format!("{column}_trunc_{w}"),
        }
    }
}

impl fmt::Display for PartitionField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let column = &self.column;
        match self.transform {
            PartitionTransform::Identity => write!(f, "{column}"),
            PartitionTransform::Year => write!(f, "year({column})"),
            PartitionTransform::Month => write!(f, "month({column})"),
            PartitionTransform::Day => write!(f, "day({column})"),
            PartitionTransform::Hour => write!(f, "hour({column})"),
            PartitionTransform::Bucket(n) => write!(f, "bucket({n}, {column})"),
            PartitionTransform::Truncate(w) => write!(f, "truncate({w}, {column})"),
        }
    }
}

/// `items` with the pieces of a transform a YAML flow list cut at its comma joined again:
/// `[bucket(16, id)]` reads as `["bucket(16", "id)"]`.
pub fn rejoin(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    let mut open = false;
    for item in items {
        match out.last_mut() {
            Some(last) if open => {
                last.push_str(", ");
                last.push_str(item.trim());
            }
            _ => out.push(item.trim().to_string()),
        }
        let last = out.last().expect("just pushed");
        open = last.matches('(').count() > last.matches(')').count();
    }
    out
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !text.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transform_parses_and_names_its_field() {
        let parsed: Vec<(String, String)> = [
            "country",
            "year(ts)",
            "MONTH(ts)",
            "day( ts )",
            "hour(ts)",
            "bucket(16, account_id)",
            "truncate(4, name)",
        ]
        .iter()
        .map(|t| {
            let field = PartitionField::parse(t).unwrap();
            (field.to_string(), field.name())
        })
        .collect();
        let expected = [
            ("country", "country"),
            ("year(ts)", "ts_year"),
            ("month(ts)", "ts_month"),
            ("day(ts)", "ts_day"),
            ("hour(ts)", "ts_hour"),
            ("bucket(16, account_id)", "account_id_bucket_16"),
            ("truncate(4, name)", "name_trunc_4"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()));
        assert_eq!(parsed, expected);
    }

    #[test]
    fn transforms_cut_at_their_comma_are_joined_again() {
        let items = ["day(ts)", "bucket(16", " id)", "country"].map(String::from);
        assert_eq!(
            rejoin(&items),
            ["day(ts)", "bucket(16, id)", "country"].map(String::from)
        );
    }

    #[test]
    fn bad_fields_say_what_is_accepted() {
        for (text, why) in [
            ("week(ts)", "use a column"),
            ("bucket(ts)", "use a column"),
            ("bucket(0, id)", "not a count above zero"),
            ("day(ts", "')' is missing"),
            ("day(1x)", "not a column name"),
            ("a b", "use a column"),
        ] {
            let message = PartitionField::parse(text).unwrap_err().to_string();
            assert!(message.contains(why), "{text}: {message}");
            assert!(message.contains("sink.iceberg.partition_by"), "{message}");
        }
    }
}
