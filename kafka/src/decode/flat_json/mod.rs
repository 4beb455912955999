//! A fast path for the JSON records most streams carry: one flat object per record whose
//! values are strings, plain numbers, booleans or null. Such a chunk is decoded straight
//! into Arrow arrays in one pass over each value. Anything else (nesting, a number
//! written as a string, a value its column's type does not take as it is, a key given
//! twice or written with an escape, an escape arrow-json refuses, a record that is not
//! one object) makes the fast path give the whole chunk back: arrow-json then decodes
//! it, or names what is wrong. On what
//! it takes, its arrays equal arrow-json's (tested against it over generated records).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, BooleanBufferBuilder, Float64Array, Int32Array, Int64Array,
    NullBufferBuilder, PrimitiveArray, RecordBatch, StringArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    DataType, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
};

/// Field types the fast path decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Utf8,
    Boolean,
    Int32,
    Int64,
    Float64,
    /// From integers only (arrow-json parses strings as dates and times).
    TimestampMs,
    TimestampUs,
}

/// Most fields a record may have for the fast path (one bit each per record).
const MAX_FIELDS: usize = 64;
/// Integer literals with more digits may not fit an `i64`.
const MAX_INTEGER_DIGITS: usize = 18;
/// Integers with at most this many digits are exact as `f64` (below 2^53).
const MAX_EXACT_FLOAT_DIGITS: usize = 15;

/// Decodes chunks of flat JSON objects of one schema, or gives them back.
#[derive(Debug, Clone)]
pub(crate) struct FlatJsonDecoder {
    /// The decoded batches' schema: the kept fields.
    schema: SchemaRef,
    fields: Vec<FieldDecoder>,
    /// Per field, whether its column is built; the values of the others are checked
    /// as strictly, then dropped.
    kept: Vec<bool>,
}

impl FlatJsonDecoder {
    /// A decoder for records of `schema`; `None` when a field's type is not one the fast
    /// path decodes, a field is not nullable, or there are too many fields.
    pub(crate) fn new(schema: &SchemaRef) -> Option<FlatJsonDecoder> {
        if schema.fields().len() > MAX_FIELDS {
            return None;
        }
        let fields = schema
            .fields()
            .iter()
            .map(|field| {
                let kind = match field.data_type() {
                    DataType::Utf8 => Kind::Utf8,
                    DataType::Boolean => Kind::Boolean,
                    DataType::Int32 => Kind::Int32,
                    DataType::Int64 => Kind::Int64,
                    DataType::Float64 => Kind::Float64,
                    DataType::Timestamp(TimeUnit::Millisecond, None) => Kind::TimestampMs,
                    DataType::Timestamp(TimeUnit::Microsecond, None) => Kind::TimestampUs,
                    _ => return None,
                };
                let name = field.name().as_bytes().to_vec();
                let plain_key = !name.iter().any(|byte| matches!(byte, b'"' | b'\\'));
                field.is_nullable().then(|| FieldDecoder {
                    quoted: plain_key.then(|| QuotedKey::new(&name)).flatten(),
                    plain_key,
                    name,
                    kind,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(FlatJsonDecoder {
            schema: schema.clone(),
            kept: vec![true; fields.len()],
            fields,
        })
    }

    /// This decoder building only the columns of the fields `kept` marks (one flag per
    /// field of the schema). A record it takes or gives back is the same as before: the
    /// other fields' values are checked as if they were kept.
    pub(crate) fn keeping(mut self, kept: &[bool]) -> FlatJsonDecoder {
        assert_eq!(kept.len(), self.fields.len(), "one flag per field");
        let kept_indices: Vec<usize> = (0..kept.len()).filter(|index| kept[*index]).collect();
        self.schema = match self.schema.project(&kept_indices) {
            Ok(schema) => Arc::new(schema),
            // The indices come from the schema itself: this cannot fail.
            Err(_) => return self,
        };
        self.kept = kept.to_vec();
        self
    }

    /// The chunk of `values` (one JSON object each) as a batch of the schema, or `None`
    /// when some value is not for the fast path.
    pub(crate) fn decode<'a>(
        &self,
        values: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    ) -> Option<RecordBatch> {
        let rows = values.len();
        let mut columns: Vec<Column> = (self.fields.iter())
            .zip(&self.kept)
            .map(|(field, kept)| match kept {
                true => Column::new(field.kind, rows),
                false => Column::checked(field.kind),
            })
            .collect();
        for value in values {
            self.decode_object(value?, &mut columns)?;
        }
        let arrays = columns
            .into_iter()
            .filter(|column| !matches!(column.values, Values::Checked(_)))
            .zip(self.schema.fields().iter())
            .map(|(column, field)| column.finish(field.data_type()))
            .collect::<Option<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(self.schema.clone(), arrays).ok()
    }

    /// Appends one record's values (null for each field it lacks) to `columns`.
    ///
    /// Strings must be UTF-8, as arrow-json requires of every key and string: a key that
    /// names a field is; the strings a column keeps are checked once the column's array
    /// is built; the keys and strings of other fields are checked here.
    fn decode_object(&self, value: &[u8], columns: &mut [Column]) -> Option<()> {
        let mut at = Scanner {
            bytes: value,
            at: 0,
        };
        let mut seen: u64 = 0;
        at.skip_whitespace();
        at.expect(b'{')?;
        at.skip_whitespace();
        if at.peek() == Some(b'}') {
            at.at += 1;
        } else {
            // Fields usually come in schema order: look at the one after the last first.
            let mut next_field = 0;
            loop {
                let field = match self.expected_key(&mut at, next_field) {
                    Some(index) => Some(index),
                    None => {
                        let key = at.key()?;
                        let index = self.field_index(key);
                        if index.is_none() {
                            std::str::from_utf8(key).ok()?;
                        }
                        index
                    }
                };
                at.skip_whitespace();
                at.expect(b':')?;
                at.skip_whitespace();
                match field {
                    Some(index) => {
                        let bit = 1u64 << index;
                        if seen & bit != 0 {
                            return None;
                        }
                        seen |= bit;
                        columns[index].push(&mut at)?;
                        next_field = index + 1;
                    }
                    None => at.skip_scalar()?,
                }
                at.skip_whitespace();
                match at.next()? {
                    b',' => at.skip_whitespace(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        at.skip_whitespace();
        if at.at != value.len() {
            return None;
        }
        for (index, column) in columns.iter_mut().enumerate() {
            if seen & (1u64 << index) == 0 {
                column.push_null();
            }
        }
        Some(())
    }

    /// Takes the key at `at` when it is field `index`'s name as written without escapes
    /// (fields usually come in schema order, so this is the common case: no search for
    /// the key's end, no comparison with other names).
    fn expected_key(&self, at: &mut Scanner<'_>, index: usize) -> Option<usize> {
        let field = self.fields.get(index).filter(|field| field.plain_key)?;
        let length = field.name.len();
        let rest = &at.bytes[at.at..];
        let found = match field.quoted.and_then(|key| key.starts(rest)) {
            Some(found) => found,
            None => rest.get(..length + 2).is_some_and(|quoted| {
                quoted[0] == b'"' && quoted[length + 1] == b'"' && quoted[1..=length] == field.name
            }),
        };
        if !found {
            return None;
        }
        at.at += length + 2;
        Some(index)
    }

    fn field_index(&self, key: &[u8]) -> Option<usize> {
        self.fields.iter().position(|field| field.name == key)
    }
}

/// A field of the schema, as the decoder looks for it.
#[derive(Debug, Clone)]
struct FieldDecoder {
    name: Vec<u8>,
    kind: Kind,
    /// Its name has no character JSON must escape in a key (`"` or `\`), so a key
    /// naming it is written as the name's bytes between quotes.
    plain_key: bool,
    /// That key, when it is plain and short.
    quoted: Option<QuotedKey>,
}

/// A key as written (`"name"`) of at most 16 bytes, compared with the bytes at the cursor
/// as two masked words: keys are short, and calling `memcmp` for each cost a twentieth
/// of the task threads' time.
#[derive(Debug, Clone, Copy)]
struct QuotedKey {
    words: [u64; 2],
    masks: [u64; 2],
}

impl QuotedKey {
    fn new(name: &[u8]) -> Option<QuotedKey> {
        let length = name.len() + 2;
        if length > 16 {
            return None;
        }
        let mut key = [0u8; 16];
        key[0] = b'"';
        key[1..=name.len()].copy_from_slice(name);
        key[length - 1] = b'"';
        let mut mask = [0u8; 16];
        mask[..length].fill(0xff);
        Some(QuotedKey {
            words: [word(&key[..8]), word(&key[8..])],
            masks: [word(&mask[..8]), word(&mask[8..])],
        })
    }

    /// Whether `bytes` start with this key; `None` when fewer than 16 bytes are left.
    fn starts(&self, bytes: &[u8]) -> Option<bool> {
        let head = bytes.get(..16)?;
        Some(
            word(&head[..8]) & self.masks[0] == self.words[0]
                && word(&head[8..]) & self.masks[1] == self.words[1],
        )
    }
}

/// The first eight bytes of `bytes` as a little-endian word.
fn word(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// One field's values as they are decoded, and which are null.
struct Column {
    values: Values,
    nulls: NullBufferBuilder,
}

/// A column's values (a null slot holds a placeholder).
enum Values {
    Utf8 {
        offsets: Vec<i32>,
        data: Vec<u8>,
    },
    Boolean(BooleanBufferBuilder),
    /// Integer kinds (`Int32` checked on append) and timestamps.
    Integer {
        kind: Kind,
        values: Vec<i64>,
    },
    Float64(Vec<f64>),
    /// A column the query does not read: values are checked as strictly as a kept
    /// column's, and not kept.
    Checked(Kind),
}

impl Column {
    fn new(kind: Kind, rows: usize) -> Column {
        let values = match kind {
            Kind::Utf8 => {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                Values::Utf8 {
                    offsets,
                    data: Vec::with_capacity(rows * 16),
                }
            }
            Kind::Boolean => Values::Boolean(BooleanBufferBuilder::new(rows)),
            Kind::Float64 => Values::Float64(Vec::with_capacity(rows)),
            Kind::Int32 | Kind::Int64 | Kind::TimestampMs | Kind::TimestampUs => Values::Integer {
                kind,
                values: Vec::with_capacity(rows),
            },
        };
        Column {
            values,
            nulls: NullBufferBuilder::new(rows),
        }
    }

    /// A column of `kind` whose values are checked and dropped.
    fn checked(kind: Kind) -> Column {
        Column {
            values: Values::Checked(kind),
            nulls: NullBufferBuilder::new(0),
        }
    }

    /// Appends the value at `at` (a literal the column takes as it is, or null).
    fn push(&mut self, at: &mut Scanner<'_>) -> Option<()> {
        if at.literal(b"null") {
            self.push_null();
            return Some(());
        }
        match &mut self.values {
            Values::Utf8 { offsets, data } => {
                at.string_with(|piece| data.extend_from_slice(piece))?;
                offsets.push(i32::try_from(data.len()).ok()?);
            }
            Values::Boolean(values) => {
                let value = if at.literal(b"true") {
                    true
                } else if at.literal(b"false") {
                    false
                } else {
                    return None;
                };
                values.append(value);
            }
            Values::Integer { kind, values } => {
                let value = at.number()?.integer()?;
                if *kind == Kind::Int32 {
                    i32::try_from(value).ok()?;
                }
                values.push(value);
            }
            Values::Float64(values) => values.push(at.number()?.float()?),
            Values::Checked(kind) => return at.check(*kind),
        }
        self.nulls.append_non_null();
        Some(())
    }

    fn push_null(&mut self) {
        match &mut self.values {
            Values::Utf8 { offsets, data } => offsets.push(data.len() as i32),
            Values::Boolean(values) => values.append(false),
            Values::Integer { values, .. } => values.push(0),
            Values::Float64(values) => values.push(0.0),
            Values::Checked(_) => return,
        }
        self.nulls.append_null();
    }

    fn finish(mut self, data_type: &DataType) -> Option<ArrayRef> {
        let nulls = self.nulls.finish();
        Some(match self.values {
            Values::Utf8 { offsets, data } => Arc::new(
                StringArray::try_new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    data.into(),
                    nulls,
                )
                .ok()?,
            ),
            Values::Boolean(mut values) => Arc::new(BooleanArray::new(values.finish(), nulls)),
            Values::Float64(values) => Arc::new(Float64Array::new(values.into(), nulls)),
            Values::Integer { kind, values } => match kind {
                Kind::Int32 => Arc::new(Int32Array::new(
                    values.into_iter().map(|v| v as i32).collect(),
                    nulls,
                )),
                Kind::Int64 => Arc::new(Int64Array::new(values.into(), nulls)),
                Kind::TimestampMs => Arc::new(
                    PrimitiveArray::<TimestampMillisecondType>::new(values.into(), nulls)
                        .with_data_type(data_type.clone()),
                ),
                Kind::TimestampUs => Arc::new(
                    PrimitiveArray::<TimestampMicrosecondType>::new(values.into(), nulls)
                        .with_data_type(data_type.clone()),
                ),
                Kind::Utf8 | Kind::Boolean | Kind::Float64 => return None,
            },
            Values::Checked(_) => return None,
        })
    }
}

/// A JSON number literal, as written.
struct Number<'a> {
    text: &'a [u8],
    negative: bool,
    /// Its integer and fraction digits read as one integer (wrapped around when there are
    /// more than 19: only used when there are fewer).
    digits: u64,
    integer_digits: usize,
    fraction_digits: usize,
    exponent: bool,
}

impl Number<'_> {
    /// Its value as an integer: only for integers of at most [`MAX_INTEGER_DIGITS`].
    fn integer(&self) -> Option<i64> {
        if self.fraction_digits > 0 || self.exponent || self.integer_digits > MAX_INTEGER_DIGITS {
            return None;
        }
        let magnitude = self.digits as i64;
        Some(if self.negative { -magnitude } else { magnitude })
    }

    /// Its value as a float, rounded as arrow-json rounds it (to the nearest `f64`; `-0`
    /// is negative zero). Without exponent and with at most [`MAX_EXACT_FLOAT_DIGITS`]
    /// digits, its digits and the power of ten dividing them are both exact as `f64`, so
    /// one division rounds to the nearest `f64` as a full parse does.
    fn float(&self) -> Option<f64> {
        if !self.exponent && self.integer_digits + self.fraction_digits <= MAX_EXACT_FLOAT_DIGITS {
            let value = self.digits as f64 / EXACT_POWERS_OF_TEN[self.fraction_digits];
            return Some(if self.negative { -value } else { value });
        }
        let value: f64 = std::str::from_utf8(self.text).ok()?.parse().ok()?;
        value.is_finite().then_some(value)
    }
}

/// `10^0` to `10^15`, each exact as `f64`.
const EXACT_POWERS_OF_TEN: [f64; MAX_EXACT_FLOAT_DIGITS + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A position in a record's bytes.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Takes `word` if it is next.
    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.bytes[self.at..].starts_with(word);
        if found {
            self.at += word.len();
        }
        found
    }

    /// A key: a string without escapes (keys with escapes are rare enough to give back).
    fn key(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        let length = quote_or_backslash(&self.bytes[start..])?;
        if self.bytes[start + length] != b'"' {
            return None;
        }
        self.at = start + length + 1;
        Some(&self.bytes[start..start + length])
    }

    /// A string's contents, unescaped as arrow-json unescapes them, handed to `sink` in
    /// pieces (not checked to be UTF-8; like arrow-json, control characters are taken as
    /// they are). `None` for an escape arrow-json refuses (it then names the error).
    fn string_with(&mut self, mut sink: impl FnMut(&[u8])) -> Option<()> {
        self.expect(b'"')?;
        loop {
            let rest = &self.bytes[self.at..];
            let found = quote_or_backslash(rest)?;
            sink(&rest[..found]);
            self.at += found + 1;
            if rest[found] == b'"' {
                return Some(());
            }
            match self.next()? {
                b'"' => sink(b"\""),
                b'\\' => sink(b"\\"),
                b'/' => sink(b"/"),
                b'b' => sink(&[8]),
                b'f' => sink(&[12]),
                b'n' => sink(b"\n"),
                b'r' => sink(b"\r"),
                b't' => sink(b"\t"),
                b'u' => {
                    let mut utf8 = [0; 4];
                    sink(self.unicode_escape()?.encode_utf8(&mut utf8).as_bytes());
                }
                _ => return None,
            }
        }
    }

    /// The character of a `\uXXXX` escape (after the `u`), or of a surrogate pair
    /// `\uD8XX\uDCXX`.
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        if let Some(c) = char::from_u32(u32::from(high)) {
            return Some(c);
        }
        self.expect(b'\\')?;
        self.expect(b'u')?;
        let low = self.hex4()?;
        if !(0xD800..=0xDBFF).contains(&high) || !(0xDC00..=0xDFFF).contains(&low) {
            return None;
        }
        char::from_u32((u32::from(high - 0xD800) << 10) + u32::from(low - 0xDC00) + 0x1_0000)
    }

    fn hex4(&mut self) -> Option<u16> {
        let mut value = 0u16;
        for _ in 0..4 {
            value = (value << 4) | char::from(self.next()?).to_digit(16)? as u16;
        }
        Some(value)
    }

    /// A number as JSON writes it: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, its
    /// digits read as they are scanned.
    fn number(&mut self) -> Option<Number<'a>> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let integer_start = self.at;
        let mut digits = match self.peek()? {
            b'0' => {
                self.at += 1;
                0
            }
            b'1'..=b'9' => self.digits(0),
            _ => return None,
        };
        let integer_digits = self.at - integer_start;
        let mut fraction_digits = 0;
        if self.peek() == Some(b'.') {
            self.at += 1;
            let fraction_start = self.at;
            digits = self.some_digits(digits)?;
            fraction_digits = self.at - fraction_start;
        }
        let mut exponent = false;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits(0)?;
            exponent = true;
        }
        Some(Number {
            text: &self.bytes[start..self.at],
            negative,
            digits,
            integer_digits,
            fraction_digits,
            exponent,
        })
    }

    /// [`Scanner::digits`], of which there must be at least one.
    fn some_digits(&mut self, value: u64) -> Option<u64> {
        self.peek()?.is_ascii_digit().then(|| self.digits(value))
    }

    /// Takes the digits at the cursor, appended to `value`'s (wrapping around past 19).
    fn digits(&mut self, mut value: u64) -> u64 {
        while let Some(digit) = self.peek().filter(u8::is_ascii_digit) {
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit - b'0'));
            self.at += 1;
        }
        value
    }

    /// Takes a value (not null) of a column of `kind` that is not kept, checked as the
    /// column would take it (strings as UTF-8, integers in range, floats finite).
    fn check(&mut self, kind: Kind) -> Option<()> {
        match kind {
            Kind::Utf8 => self.utf8_string(),
            Kind::Boolean => (self.literal(b"true") || self.literal(b"false")).then_some(()),
            Kind::Int32 => i32::try_from(self.number()?.integer()?).ok().map(|_| ()),
            Kind::Int64 | Kind::TimestampMs | Kind::TimestampUs => {
                self.number()?.integer().map(|_| ())
            }
            Kind::Float64 => self.number()?.float().map(|_| ()),
        }
    }

    /// Takes a string whose contents are UTF-8. Its pieces between escapes are checked
    /// one by one: they end at ASCII bytes, so they are UTF-8 exactly when the whole is.
    fn utf8_string(&mut self) -> Option<()> {
        // Most strings are ASCII without escapes: one pass finds their end and checks them.
        if self.peek() == Some(b'"') {
            let contents = &self.bytes[self.at + 1..];
            let plain = plain_ascii_length(contents);
            if contents.get(plain) == Some(&b'"') {
                self.at += plain + 2;
                return Some(());
            }
        }
        let mut utf8 = true;
        self.string_with(|piece| utf8 &= std::str::from_utf8(piece).is_ok())?;
        utf8.then_some(())
    }

    /// Skips a value of a field the schema does not have: only scalars.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.utf8_string(),
            b't' if self.literal(b"true") => Some(()),
            b'f' if self.literal(b"false") => Some(()),
            b'n' if self.literal(b"null") => Some(()),
            _ => self.number().map(|_| ()),
        }
    }
}

/// Where the first `"` or `\` in `bytes` is. Strings are short and mostly ASCII: a
/// plain ASCII run is skipped first, a search takes over only past a non-ASCII byte.
fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    let plain = plain_ascii_length(bytes);
    match bytes.get(plain)? {
        b'"' | b'\\' => Some(plain),
        _ => Some(plain + memchr::memchr2(b'"', b'\\', &bytes[plain..])?),
    }
}

/// How many bytes `bytes` starts with that are ASCII and neither `"` nor `\`. Looks at
/// eight bytes per step, as one `u64` (six times faster than a byte loop here).
fn plain_ascii_length(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of each zero byte of `word`, and maybe of bytes above a zero byte: the
    // lowest bit set is always a zero byte's.
    let zero_bytes = |word: u64| word.wrapping_sub(ONES) & !word & HIGH_BITS;
    let mut chunks = bytes.chunks_exact(8);
    let mut length = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let ends = (word & HIGH_BITS)
            | zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')));
        if ends != 0 {
            return length + (ends.trailing_zeros() / 8) as usize;
        }
        length += 8;
    }
    let rest = chunks.remainder();
    let ends_plain = |byte: &u8| *byte == b'"' || *byte == b'\\' || !byte.is_ascii();
    length + rest.iter().position(ends_plain).unwrap_or(rest.len())
}

#[cfg(test)]
mod tests;
