//! Problems in TOML's own words. serde names what it found and expected
//! in Rust's terms (a "map" for a date-time or an inline table, a
//! "sequence", "i64", "a spanned value"); an admin reads TOML. The kind of
//! value found is read from the file at the problem's place, and named
//! without showing the value.

/// What kind of TOML value `text` (where a problem points) begins, named
/// without showing it. serde calls a date-time and an inline table both a
/// "map", an array a "sequence", and a table made by a dotted key
/// (`password.x = …`) "a string, expected a borrowed string".
pub(super) fn toml_kind(source: &str, start: usize) -> &'static str {
    let text = source.get(start..).unwrap_or_default();
    let b = text.as_bytes();
    let line = text.lines().next().unwrap_or_default().trim_end();
    let line_start = source
        .get(..start)
        .and_then(|before| before.rsplit('\n').next())
        .is_some_and(|s| s.trim().is_empty());
    // `[users.a.password]`: a table header, where a line starts (an array
    // value follows a key).
    if line_start
        && line.starts_with('[')
        && !line.starts_with("[[")
        && line.ends_with(']')
        && !line.contains(['=', ','])
    {
        return "a table";
    }
    // `password."x" = …`: a quoted key, so a table made by a dotted key.
    if let Some(quote @ (b'"' | b'\'')) = b.first().copied() {
        let close = text[1..].find(char::from(quote)).map(|i| i + 2);
        let after = close.and_then(|i| text.get(i..)).map(str::trim_start);
        if after.is_some_and(|a| a.starts_with('.') || a.starts_with('=')) {
            return "a table";
        }
    }
    let digits =
        |range: std::ops::Range<usize>| b.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    match b.first() {
        Some(b'{') => "an inline table",
        Some(b'[') => "an array",
        Some(b'"' | b'\'') => "a string",
        _ if text.starts_with("true") || text.starts_with("false") => "a boolean",
        _ if (digits(0..4) && b.get(4) == Some(&b'-')) || (digits(0..2) && b.get(2) == Some(&b':')) => {
            "a date or time"
        }
        Some(b'0'..=b'9' | b'+' | b'-') => {
            let value = text.split([' ', '\t', ',', ']', '}', '\n', '#']).next().unwrap_or(text);
            let hex = value.trim_start_matches(['+', '-']).starts_with("0x");
            if value.contains(['.', 'i', 'n']) || (!hex && value.contains(['e', 'E'])) {
                "a floating-point number"
            } else {
                "an integer"
            }
        }
        _ if text.starts_with("inf") || text.starts_with("nan") => "a floating-point number",
        _ => "a table",
    }
}

/// `message` (a serde error about the value at a problem's place) in TOML's
/// terms: the kind of value found as read from the file (`found`), and the
/// kind expected as TOML names it.
pub(super) fn in_toml_terms(message: &str, found: Option<&str>) -> String {
    let Some((what, rest)) = ["invalid type: ", "invalid value: ", "invalid length "]
        .iter()
        .find_map(|p| message.strip_prefix(p).map(|rest| (*p, rest)))
    else {
        return message.to_owned();
    };
    let (seen, expected) = match rest.split_once(", expected ") {
        Some((seen, expected)) => (seen, Some(expected_in_toml_terms(expected))),
        None => (rest, None),
    };
    // An invalid value is shown as it is (`-1`, "out of range"): its kind
    // is right, the value is the point.
    let seen = match (what, found) {
        ("invalid type: ", Some(found)) => found,
        _ => seen,
    };
    match expected {
        Some(expected) => format!("{what}{seen}, expected {expected}"),
        None => format!("{what}{seen}"),
    }
}

/// serde's name of an expected kind (a derived struct's, a primitive's, a
/// collection's) as TOML names it.
fn expected_in_toml_terms(expected: &str) -> &str {
    match expected {
        "a sequence" => "an array",
        // `Spanned` keys of a table: a date-time reaches them as a map
        // with a private key.
        "a map" | "a spanned value" => "a table",
        "a borrowed string" => "a string",
        "i8" | "i16" | "i32" | "i64" | "isize" | "u8" | "u16" | "u32" | "u64" | "usize" => "an integer",
        "f32" | "f64" => "a number",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_words_become_toml_words() {
        for (message, found, said) in [
            (
                "invalid type: map, expected a sequence",
                Some("a date or time"),
                "invalid type: a date or time, expected an array",
            ),
            (
                "invalid type: map, expected i64",
                Some("an inline table"),
                "invalid type: an inline table, expected an integer",
            ),
            (
                "invalid type: sequence, expected a [limits] table",
                Some("an array"),
                "invalid type: an array, expected a [limits] table",
            ),
            (
                "invalid type: floating point `1.5`, expected u16",
                Some("a floating-point number"),
                "invalid type: a floating-point number, expected an integer",
            ),
            (
                "invalid type: string \"x\", expected a spanned value",
                Some("a date or time"),
                "invalid type: a date or time, expected a table",
            ),
            (
                "invalid type: string \"x\", expected a borrowed string",
                None,
                "invalid type: string \"x\", expected a string",
            ),
            (
                "invalid value: integer `-1`, expected u64",
                Some("an integer"),
                "invalid value: integer `-1`, expected an integer",
            ),
            ("unknown field `x`, expected `a`", Some("an integer"), "unknown field `x`, expected `a`"),
        ] {
            assert_eq!(in_toml_terms(message, found), said, "{message}");
        }
    }
}
