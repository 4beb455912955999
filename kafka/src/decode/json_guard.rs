//! A bound on JSON nesting, checked before any recursive code sees a value.
//!
//! arrow-json's tape decoder is iterative, but the error it builds for a value of the
//! wrong type serializes that value back to text recursively (arrow-json 58,
//! `Tape::serialize` in `reader/tape.rs`), one stack frame per nesting level: a record
//! of 200,000 `[` overflows the executor's stack and aborts the process. This scan runs
//! first, in one pass without recursion, and turns such a record into a malformed one.

/// Where `value` first nests deeper than `limit` objects and arrays, as the byte offset of
/// the bracket that went too deep; `None` when it stays within the limit. Brackets inside
/// strings do not count. The scan does not validate JSON: the decoder does that next.
pub fn too_deep_at(value: &[u8], limit: u32) -> Option<usize> {
    // Nesting never exceeds the number of opening brackets, which a branch-free count
    // finds far faster than the scan below: most records never need the scan. The count
    // runs in byte-wide counters over chunks of at most 255 bytes (they cannot overflow),
    // which the compiler vectorizes 16 or 32 bytes at a time.
    let openers: usize = value
        .chunks(u8::MAX as usize)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0u8, |n, &b| n + u8::from(b == b'[' || b == b'{')) as usize
        })
        .sum();
    if openers <= limit as usize {
        return None;
    }
    let mut depth = 0u32;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &byte) in value.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_objects_and_arrays_but_not_brackets_in_strings() {
        assert_eq!(too_deep_at(br#"{"a":[1,{"b":2}]}"#, 3), None);
        assert_eq!(too_deep_at(br#"{"a":[1,{"b":2}]}"#, 2), Some(8));
        assert_eq!(too_deep_at(br#"{"a":"[[[[[[[["}"#, 1), None);
        assert_eq!(too_deep_at(br#"{"a":"\"[[[","b":[[]]}"#, 2), Some(18));
        assert_eq!(too_deep_at(b"", 0), None);
        assert_eq!(too_deep_at(b"[]", 0), Some(0));
    }

    #[test]
    fn many_brackets_side_by_side_are_not_deep() {
        let wide = format!("[{}]", vec!["[]"; 500].join(","));
        assert_eq!(too_deep_at(wide.as_bytes(), 2), None);
        assert_eq!(too_deep_at(wide.as_bytes(), 1), Some(1));
    }

    #[test]
    fn a_deep_value_is_found_without_recursion() {
        let mut deep = "[".repeat(200_000);
        deep.push_str(&"]".repeat(200_000));
        assert_eq!(too_deep_at(deep.as_bytes(), 64), Some(64));
    }
}
