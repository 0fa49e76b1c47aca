//! Problems in TOML's own words. serde names what it found and expected
//! in Rust's terms (a "map" for a date-time or an inline table, a
//! "sequence", "i64", "a spanned value"); an admin reads TOML. The kind of
//! value found is read from the file at the problem's place, and named
//! without showing the value.

/// Whether byte `at` of a file is in `item` as TOML reads it: in its value,
/// or, for a table made by a `[header]` or by dotted keys (toml_edit gives
/// these no value span), in its header, one of its keys, or its tables'
/// down to `depth` more levels. A type error in `max_connections.x = 1`
/// points at the `x`, one in `[limits.idle_timeout]` at the header: the
/// setting went unnamed (probe 272).
pub(super) fn item_holds(item: &toml_edit::Item, at: usize, depth: usize) -> bool {
    match item {
        toml_edit::Item::Table(t) => {
            t.span().is_some_and(|s| s.contains(&at))
                || t.iter().any(|(key, inner)| {
                    t.key(key).and_then(toml_edit::Key::span).is_some_and(|s| s.contains(&at))
                        || (depth > 0 && item_holds(inner, at, depth - 1))
                })
        }
        other => other.span().is_some_and(|s| s.contains(&at)),
    }
}

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
        // A date-time in quotes is a string (probe 160).
        "a TOML datetime" => "a date-time (written without quotes: 2027-03-31)",
        other => other,
    }
}

/// The most a config or users file may weigh, in units of about 0.2 to
/// 0.4 KB of the parser's memory (see [`weight`]): 60 MB of
/// `a = [[],[],…]`, well under the 64 MiB a file may have, took the parser
/// 5.8 GB and 20 s (probe 100). A user as `authgate users add` writes one
/// with two groups and an expiry (a table with four keys) weighs 22, so
/// that 113,000 fit; 26, and 96,000, when the expiry has a fraction of a
/// second (its `.` weighs as one in a key: probe 135).
pub(super) const MAX_WEIGHT: usize = 2_500_000;

/// What a character outside strings and comments weighs, by what it makes
/// the parser hold (measured on the release build, peak RSS of `check` for
/// a file of each shape, probes 101 and 102): a table header's `[` (at the
/// start of its line) a table, about 1.9 KB with its key (`[tN]` then
/// `k = 1`); a `.` a table too, in a dotted key (about 1.2 KB; a float's
/// dot counts as well, harmlessly); `{` an inline table (about 1 KB), and
/// another `[` an array (0.7 to 0.9 KB: 278,000 of `[[[[[[[[1]]]]]]]]`,
/// each `[` weighed 1, took 1.76 GB; probe 103); `=` a key and its value
/// (0.4 to 0.75 KB); `,` an item (0.1 to 0.3 KB).
fn weight(c: u8, starts_line: bool) -> usize {
    match c {
        b'[' if starts_line => 6,
        b'.' => 4,
        b'{' | b'[' => 3,
        b'=' => 2,
        b',' => 1,
        _ => 0,
    }
}

/// Where `source` passes [`MAX_WEIGHT`], its characters
/// outside strings and comments weighed by [`weight`]; `None` within the
/// bound. A linear pass before the parser's: a count, not a parse (a
/// string left open only ends the count early).
pub(super) fn past_max_weight(source: &str) -> Option<usize> {
    past_weight(source, MAX_WEIGHT)
}

/// [`past_max_weight`] with `max` for its bound.
fn past_weight(source: &str, max: usize) -> Option<usize> {
    let b = source.as_bytes();
    let mut weight_so_far = 0usize;
    // Only spaces and tabs so far on this line.
    let mut starts_line = true;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'#' => i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n),
            b'"' | b'\'' => i = string_end(b, i),
            _ => {
                weight_so_far += weight(c, starts_line);
                if weight_so_far > max {
                    return Some(i);
                }
                i += 1;
            }
        }
        starts_line = match c {
            b'\n' => true,
            b' ' | b'\t' | b'\r' => starts_line,
            _ => false,
        };
    }
    None
}

/// Past the string that opens at `at` (basic or literal, on one line or
/// multi-line): the end of `b` when it is not closed.
fn string_end(b: &[u8], at: usize) -> usize {
    let q = b[at];
    let escapes = q == b'"';
    let triple = [q, q, q];
    let (mut i, multi) = if b[at..].starts_with(&triple) { (at + 3, true) } else { (at + 1, false) };
    while let Some(&c) = b.get(i) {
        if escapes && c == b'\\' {
            i += 2;
        } else if multi && b[i..].starts_with(&triple) {
            // Up to two quotes of the text may come right before the end.
            let run = b[i..].iter().take_while(|&&c| c == q).count();
            return i + run;
        } else if !multi && (c == q || c == b'\n') {
            return i + 1;
        } else {
            i += 1;
        }
    }
    b.len()
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

    /// Parts are weighed outside strings and comments only: a PHC hash
    /// (`m=19456,t=2,p=1`) or a `#` comment with commas is one value.
    #[test]
    fn parts_are_weighed_outside_strings_and_comments() {
        let at = |text: &str, max| past_weight(text, max);
        // `=` 2, `[` of an array 3, `,` 1.
        assert_eq!(at("a = [1, 2]", 6), None);
        assert_eq!(at("a = [1, 2]", 5), Some(6));
        let quiet = "p = \"$argon2id$v=19$m=8,t=1,p=1$x\" # a, b, [c]\nq = 'x,=[{'\n";
        assert_eq!(at(quiet, 4), None);
        assert_eq!(at(&format!("{quiet}r = 1"), 4), Some(quiet.len() + 2));
        // Multi-line strings (with an escaped quote, and quotes of the text
        // right before the end) and a basic string ending in `\"`.
        let multi = r#"a = """x, \""" ,"""""
b = '''
,,,'''''
c = "\",""#;
        assert_eq!(at(multi, 6), None, "{multi}");
        assert_eq!(at(&format!("{multi}\nd = 1"), 6), Some(multi.len() + 3));
        // An open string ends the count.
        assert_eq!(at("a = \"x, y, z", 2), None);
        // A dot in a key makes a table: 4; an inline table 3.
        assert_eq!(at("a.b.c = 1", 10), None);
        assert_eq!(at("a.b.c = 1", 7), Some(3));
        assert_eq!(at("a = {}", 5), None);
        assert_eq!(at("a = {}", 4), Some(4));
        // A table header's `[`, at the start of its line: 6.
        assert_eq!(at("[\"a.b\".c]", 10), None);
        assert_eq!(at("[\"a.b\".c]", 9), Some(6));
        assert_eq!(at(" \t[t]\nk = 1", 7), Some(8));
    }
}
