//! `Proxy-Authorization: Basic` parsing (RFC 7617), pure and allocation-light.
//!
//! RFC 7617 §2: `credentials = "Basic" 1*SP token68`, the token68 being the
//! base64 of `user-id ":" password`; the user-id cannot contain `:`, the
//! password can. With `charset="UTF-8"` in the challenge (§2.1) clients send
//! UTF-8; older clients (Python `requests`, pip) send ISO-8859-1, so bytes that
//! are not valid UTF-8 are read as ISO-8859-1. Both parts are NFC-normalised,
//! so a client that sends decomposed characters matches a password stored
//! composed. That is all of RFC 8265's preparation done: not its width
//! mapping of names (full-width names are other names), nor OpaqueString's
//! mapping of other spaces to U+0020 in passwords (a no-break space is
//! another password), nor its refusal of an empty one (probe 342).

use std::fmt;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::is_nfc_quick;

/// Longest `Proxy-Authorization` value we look at; longer is malformed.
pub const MAX_HEADER_LEN: usize = 4096;

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A username and password as presented. `Debug` never shows the password.
/// Equal when they are the same username and password, however spelled.
#[derive(Clone)]
pub struct Credentials {
    /// The user-id, NFC-normalised.
    pub username: String,
    /// The password, NFC-normalised.
    pub password: String,
    /// Whether they were sent in another spelling than their normal form
    /// (ISO-8859-1 bytes, or characters that NFC changes): one login then
    /// has many headers, which must not each be an entry of the
    /// verified-credential cache.
    pub respelled: bool,
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username && self.password == other.password
    }
}

impl Eq for Credentials {}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a header is not usable Basic credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not the `Basic` scheme.
    #[error("not the Basic scheme")]
    WrongScheme,
    /// Bad base64, no `:`, or too long.
    #[error("malformed Basic credentials")]
    Encoding,
}

/// Parses a `Proxy-Authorization` header value.
///
/// # Errors
/// [`Malformed::WrongScheme`] for any scheme other than Basic, and
/// [`Malformed::Encoding`] for bad base64, a missing `:` or an oversized value.
pub fn parse(value: &[u8]) -> Result<Credentials, Malformed> {
    if value.len() > MAX_HEADER_LEN {
        return Err(Malformed::Encoding);
    }
    let value = trim(value);
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, &value[value.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(Malformed::WrongScheme);
    }
    let token = trim(rest);
    if token.is_empty() {
        return Err(Malformed::Encoding);
    }
    let decoded = BASE64.decode(token).map_err(|_| Malformed::Encoding)?;
    let colon = decoded.iter().position(|&b| b == b':').ok_or(Malformed::Encoding)?;
    let (username, user_respelled) = text(&decoded[..colon]);
    let (password, password_respelled) = text(&decoded[colon + 1..]);
    Ok(Credentials { username, password, respelled: user_respelled || password_respelled })
}

/// The token of a Basic header in one spelling for all the spellings
/// [`parse`] reads the same: scheme in any case, any spaces, base64 with or
/// without its `=` padding. `None` for another scheme. (The cache keyed on
/// the header as sent, so one user could fill it with `basic`, `BASIC`,
/// `Basic  ` ... variants of one login, each costing an argon2 run.)
pub fn canonical_token(value: &[u8]) -> Option<&[u8]> {
    // As `parse` bounds it: a header of 5,000 bytes was refused with its
    // login not cached yet and let in once it was (probe 105).
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let value = trim(value);
    let space = value.iter().position(|&b| b == b' ')?;
    if !value[..space].eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let token = trim(&value[space..]);
    // A space or tab inside the token is one `parse` refuses; stripped of
    // its `=` after one (`Basic YWxpY2U6YTE  ==`), the token ended in
    // spaces and stood for a header that `parse` reads (`Basic YWxpY2U6YTE`):
    // no login shared the key, but the key no longer named one spelling
    // (found by `fuzz/`'s `request_parts`).
    if token.iter().any(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    let mut unpadded = token;
    while let [rest @ .., b'='] = unpadded {
        unpadded = rest;
    }
    // Only the padding `parse` accepts (up to the canonical amount: none,
    // part of it or all of it): another spelling must not reach an entry
    // that `parse` would refuse, and each accepted one must share it.
    let pad = token.len() - unpadded.len();
    (pad <= (4 - unpadded.len() % 4) % 4).then_some(unpadded)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// UTF-8 if valid, else ISO-8859-1; then NFC. And whether that is
/// another spelling than the bytes (ISO-8859-1, or changed by NFC).
fn text(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let normal = nfc(s);
            let respelled = normal != s;
            (normal, respelled)
        }
        Err(_) => (nfc(&bytes.iter().map(|&b| b as char).collect::<String>()), true),
    }
}

/// NFC normalisation (as RFC 8265 prepares text), skipping the work for text already in NFC.
pub fn nfc(s: &str) -> String {
    if is_nfc_quick(s.chars()) == unicode_normalization::IsNormalized::Yes {
        s.to_owned()
    } else {
        s.nfc().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_with_one_canonical_token_parse_to_the_same_credentials() {
        // bob:bob needs two `=`; one is accepted too (and was a separate
        // cache entry, an argon2 run per spelling).
        let bob = parse(b"Basic Ym9iOmJvYg==").unwrap();
        for same in [&b"Basic Ym9iOmJvYg="[..], b"basic Ym9iOmJvYg", b"BASIC  Ym9iOmJvYg="] {
            assert_eq!(canonical_token(same), Some(&b"Ym9iOmJvYg"[..]));
            assert_eq!(parse(same).unwrap(), bob, "{}", String::from_utf8_lossy(same));
        }
        assert!(parse(b"Basic Ym9iOmJvYg===").is_err());
        assert_eq!(canonical_token(b"Basic Ym9iOmJvYg==="), None);
        let canonical = parse(b"Basic YWxpY2U6YTE=").unwrap();
        for same in [
            &b"basic YWxpY2U6YTE="[..],
            b"BASIC YWxpY2U6YTE",
            b"Basic   YWxpY2U6YTE=",
            b" bAsIc \tYWxpY2U6YTE= ",
        ] {
            assert_eq!(canonical_token(same), Some(&b"YWxpY2U6YTE"[..]));
            assert_eq!(parse(same).unwrap(), canonical, "{}", String::from_utf8_lossy(same));
        }
        // What `parse` refuses has no canonical token.
        for refused in [
            &b"Basic YWxpY2U6YTE=="[..],
            b"Basic\tYWxpY2U6YTE=",
            b"Bearer YWxpY2U6YTE=",
            b"Basic YWxpY2U6YTE  ==",
            b"Basic YWxp Y2U6YTE",
            b"Basic YWxpY2U6YTE\t\t=",
        ] {
            assert!(parse(refused).is_err(), "{}", String::from_utf8_lossy(refused));
            assert_eq!(canonical_token(refused), None, "{}", String::from_utf8_lossy(refused));
        }
    }

    fn b64(s: &[u8]) -> Vec<u8> {
        let mut v = b"Basic ".to_vec();
        v.extend(base64::engine::general_purpose::STANDARD.encode(s).bytes());
        v
    }

    #[test]
    fn parses_plain_credentials() {
        let c = parse(&b64(b"alice:s3cret")).unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.password, "s3cret");
    }

    #[test]
    fn password_may_contain_colons_and_spaces() {
        let c = parse(&b64(b"bob:a:b c: d")).unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(c.password, "a:b c: d");
    }

    #[test]
    fn scheme_is_case_insensitive_and_whitespace_tolerated() {
        let mut v = b"  bAsIc   ".to_vec();
        v.extend(base64::engine::general_purpose::STANDARD.encode("u:p").bytes());
        v.extend(b"  ");
        assert_eq!(parse(&v).unwrap().password, "p");
    }

    #[test]
    fn utf8_and_latin1_and_decomposed_all_match() {
        let utf8 = parse(&b64("jürgen:pässwörd".as_bytes())).unwrap();
        let latin1 = parse(&b64(b"j\xfcrgen:p\xe4ssw\xf6rd")).unwrap();
        let decomposed = parse(&b64("ju\u{308}rgen:pa\u{308}ssw\u{f6}rd".as_bytes())).unwrap();
        assert_eq!(utf8, latin1);
        assert_eq!(utf8, decomposed);
        assert_eq!(utf8.password, "pässwörd");
        // Only the UTF-8 NFC spelling is the header's own; the others are
        // cached by their normal form.
        assert!(!utf8.respelled && latin1.respelled && decomposed.respelled);
        assert!(parse(&b64("ju\u{308}rgen:p".as_bytes())).unwrap().respelled, "the username counts too");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(b"Bearer abc"), Err(Malformed::WrongScheme));
        assert_eq!(parse(b"Basic"), Err(Malformed::Encoding));
        assert_eq!(parse(b"Basic !!!"), Err(Malformed::Encoding));
        assert_eq!(parse(&b64(b"nocolon")), Err(Malformed::Encoding));
        assert_eq!(parse(&vec![b'A'; MAX_HEADER_LEN + 1]), Err(Malformed::Encoding));
        assert_eq!(parse(b""), Err(Malformed::WrongScheme));
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let c = parse(b"Basic dTpwMQ").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p1"));
    }

    #[test]
    fn debug_redacts_password() {
        let c = parse(&b64(b"alice:hunter2")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
