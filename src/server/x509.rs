//! Just enough DER to tell whether a PEM block is shaped like an X.509
//! certificate and to read a certificate's validity period (RFC 5280 §4.1).
//!
//! rustls reads only the first certificate of a listener's chain (to match
//! it with the key); the others went out to clients unread, so a corrupt
//! intermediate loaded, and every handshake failed (probe 118). Nor does it
//! look at dates: an expired certificate replaced a working one at a reload.
//! A full X.509 parser would add a dozen crates for two fields at a fixed
//! place; this walks the outer structure with bounds-checked slices only.

use std::time::SystemTime;

/// A certificate's `notBefore` and `notAfter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first moment the certificate is valid.
    pub not_before: SystemTime,
    /// The last moment the certificate is valid.
    pub not_after: SystemTime,
    /// Its issuer and subject names are the same and its key identifiers,
    /// if it has both, are too: a root, which a client takes from its own
    /// trust store rather than from the chain it is sent.
    pub self_issued: bool,
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`.
const VERSION: u8 = 0xa0;

/// One DER element at the start of `input`: its tag, its content and what
/// follows it. `None` when it does not fit or uses a form DER does not
/// (a high tag number, an indefinite or over-long length).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b)), rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// The element at the start of `input` if it has tag `want`: its content
/// and the rest.
fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    element(input).and_then(|(tag, content, rest)| (tag == want).then_some((content, rest)))
}

/// `tbsCertificate` of a certificate: the whole input is one SEQUENCE of
/// a SEQUENCE (what is signed), a SEQUENCE (the algorithm) and a BIT
/// STRING (the signature).
fn tbs(der: &[u8]) -> Option<&[u8]> {
    let (cert, rest) = expect(der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (tbs, rest) = expect(cert, SEQUENCE)?;
    let (_, rest) = expect(rest, SEQUENCE)?;
    let (_, rest) = expect(rest, BIT_STRING)?;
    rest.is_empty().then_some(tbs)
}

/// The fields of `tbsCertificate` in their order (RFC 5280 §4.1), each of
/// its type: an optional `[0]` version holding an INTEGER, the serial
/// number (INTEGER), the signature algorithm, issuer, validity, subject
/// and public key (SEQUENCEs), then only the optional `[1]`, `[2]` unique
/// ids and `[3]` extensions, in order. Returns the validity's content,
/// and whether it is a root (see [`Validity::self_issued`]).
///
/// Only the outer shape was checked at first: a block with one byte of
/// its version changed, or `30 06 30 00 30 00 03 00`, passed, and every
/// handshake failed in the client's parser (probe 119).
fn validity_field(tbs: &[u8]) -> Option<(&[u8], bool)> {
    let rest = match expect(tbs, VERSION) {
        Some((version, rest)) => {
            let (_, inside) = expect(version, INTEGER)?;
            inside.is_empty().then_some(rest)?
        }
        None => tbs,
    };
    let (serial, rest) = expect(rest, INTEGER)?;
    let (algorithm, rest) = expect(rest, SEQUENCE)?;
    let (issuer, rest) = expect(rest, SEQUENCE)?; // (an empty Name is a SEQUENCE too)
    let (validity, rest) = expect(rest, SEQUENCE)?;
    let (subject, rest) = expect(rest, SEQUENCE)?;
    let (key, mut rest) = expect(rest, SEQUENCE)?;
    if serial.is_empty() || algorithm.is_empty() || key.is_empty() {
        return None;
    }
    let mut extensions: &[u8] = &[];
    for tag in [0xa1, 0xa2, 0xa3] {
        if let Some((inside, after)) = expect(rest, tag).or_else(|| expect(rest, tag & !0x20)) {
            if tag == 0xa3 {
                extensions = inside;
            }
            rest = after;
        }
    }
    // A root: its issuer's name is its subject's, and its key identifiers
    // do not say another key signed it. A key-rollover certificate has the
    // names of one (subject = issuer) but is signed by the old key: it was
    // taken for a root and its dates went unread (probe 188).
    let (subject_key, authority_key) = key_ids(extensions);
    let other_key = matches!((subject_key, authority_key), (Some(s), Some(a)) if s != a);
    rest.is_empty().then_some((validity, issuer == subject && !other_key))
}

/// The subject key identifier and the authority key identifier's
/// `keyIdentifier` (RFC 5280 §4.2.1.1–2) among `extensions` (the content of
/// `[3]`), where present and readable.
fn key_ids(extensions: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    let (mut subject_key, mut authority_key) = (None, None);
    let Some((mut list, _)) = expect(extensions, SEQUENCE) else { return (None, None) };
    while let Some((extension, after)) = expect(list, SEQUENCE) {
        list = after;
        let Some((oid, inner)) = expect(extension, OID) else { continue };
        let inner = expect(inner, BOOLEAN).map_or(inner, |(_, after)| after);
        let Some((value, _)) = expect(inner, OCTET_STRING) else { continue };
        match oid {
            [0x55, 0x1d, 0x0e] => subject_key = expect(value, OCTET_STRING).map(|(id, _)| id),
            [0x55, 0x1d, 0x23] => {
                authority_key =
                    expect(value, SEQUENCE).and_then(|(aki, _)| expect(aki, 0x80)).map(|(id, _)| id);
            }
            _ => {}
        }
    }
    (subject_key, authority_key)
}

/// Whether `der` is shaped like a certificate: the outer SEQUENCE of what
/// is signed, the algorithm and the signature, and what is signed made of
/// its fields in their order and types, with dates that read (see
/// [`validity`]). Not a full check: what a client makes of the values is
/// its own.
pub fn is_certificate(der: &[u8]) -> bool {
    validity(der).is_some()
}

/// The validity period of the certificate `der`; `None` when it is not
/// shaped like one (see [`is_certificate`]).
pub fn validity(der: &[u8]) -> Option<Validity> {
    let (validity, self_issued) = validity_field(tbs(der)?)?;
    let (tag, before, rest) = element(validity)?;
    let not_before = time(tag, before)?;
    let (tag, after, rest) = element(rest)?;
    let not_after = time(tag, after)?;
    rest.is_empty().then_some(Validity { not_before, not_after, self_issued })
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), the forms RFC 5280 §4.1.2.5 allows. Years before
/// 1970 too (a `notBefore` of 1965 is valid DER; read through a parser
/// that refused them, a certificate with one was not seen to have expired:
/// probe 119).
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        digits.get(from..to)?.iter().try_fold(0i64, |n, d| Some(n * 10 + i64::from(d - b'0')))
    };
    let (year, at) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = number(0, 2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0, 4)?, 4),
        _ => return None,
    };
    let (month, day) = (number(at, at + 2)?, number(at + 2, at + 4)?);
    let (hour, minute, second) = (number(at + 4, at + 6)?, number(at + 6, at + 8)?, number(at + 8, at + 10)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let month_days = *days_in_month.get(usize::try_from(month).ok()?.checked_sub(1)?)?;
    if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds =
        crate::calendar::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let magnitude = std::time::Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        std::time::UNIX_EPOCH.checked_add(magnitude)
    } else {
        std::time::UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// `t` as RFC 3339 in UTC, whole seconds (`2021-01-01T00:00:00Z`), before
/// 1970 too: humantime's formatter panics there, and a certificate that
/// expired in 1969 made `check`, the start and a reload panic (probe 122).
pub fn rfc3339(t: SystemTime) -> String {
    // Whole seconds down: 0.5 s before 1970 is 1969-12-31T23:59:59.
    let seconds = crate::calendar::unix_seconds(t);
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = crate::calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn reads_the_validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["proxy.test".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2051, 6, 30);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.clone().self_signed(&key).unwrap();
        let v = validity(cert.der()).unwrap();
        assert_eq!(v.not_before, at(1_577_836_800));
        // After 2049: a GeneralizedTime.
        assert_eq!(v.not_after, at(2_571_696_000));
        assert!(is_certificate(cert.der()));
        // notBefore before 1970: read (it was not, and the certificate's
        // expiry went unseen: probe 119).
        params.not_before = rcgen::date_time_ymd(1965, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let v = validity(cert.der()).unwrap();
        assert_eq!(v.not_after, at(1_609_459_200));
        assert!(v.not_before < UNIX_EPOCH);
    }

    #[test]
    fn times_in_both_forms() {
        assert_eq!(time(UTC_TIME, b"491231235959Z"), Some(at(2_524_607_999)));
        assert_eq!(time(UTC_TIME, b"700101000001Z"), Some(at(1)));
        assert_eq!(time(GENERALIZED_TIME, b"20210101000000Z"), Some(at(1_609_459_200)));
        for bad in [&b"2021010100000Z"[..], b"20210101000000", b"2021010100000aZ", b"20211301000000Z", b""] {
            assert_eq!(time(GENERALIZED_TIME, bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(time(UTC_TIME, b"20210101000000Z"), None);
        // Before 1970 (probe 119), leap days, the last second of 9999.
        let before = |secs: u64| std::time::UNIX_EPOCH.checked_sub(Duration::from_secs(secs));
        assert_eq!(time(UTC_TIME, b"650101000000Z"), before(157_766_400));
        assert_eq!(time(UTC_TIME, b"691231235959Z"), before(1));
        assert_eq!(time(GENERALIZED_TIME, b"20240229000000Z"), Some(at(1_709_164_800)));
        assert_eq!(time(GENERALIZED_TIME, b"20230229000000Z"), None);
        assert_eq!(time(GENERALIZED_TIME, b"21000229000000Z"), None);
        assert_eq!(time(GENERALIZED_TIME, b"99991231235959Z"), Some(at(253_402_300_799)));
        // And back: written without a panic before 1970 (probe 122).
        for text in [
            &b"19650101000000Z"[..],
            b"19691231235959Z",
            b"19600229120000Z",
            b"20240229000000Z",
            b"99991231235959Z",
        ] {
            let t = time(GENERALIZED_TIME, text).unwrap();
            let digits: String = String::from_utf8_lossy(text).chars().filter(char::is_ascii_digit).collect();
            let written: String = rfc3339(t).chars().filter(char::is_ascii_digit).collect();
            assert_eq!(written, digits);
        }
        assert_eq!(rfc3339(at(1_609_459_200)), "2021-01-01T00:00:00Z");
        for bad in [&b"20210100000000Z"[..], b"20210132000000Z", b"20210101240000Z", b"20210101006000Z"] {
            assert_eq!(time(GENERALIZED_TIME, bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn what_is_not_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap().self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        for n in [0, 1, 2, 10, der.len() - 1] {
            assert!(!is_certificate(&der[..n]), "cut to {n}");
            assert_eq!(validity(&der[..n]), None);
        }
        let mut longer = der.clone();
        longer.push(0);
        assert!(!is_certificate(&longer));
        assert!(!is_certificate(&[0, 0, 0]));
        // A length that claims more than there is, or an indefinite one.
        assert!(!is_certificate(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]));
        assert!(!is_certificate(&[0x30, 0x80, 0, 0]));
        // Shaped like one outside, not inside (probe 119): an empty one,
        // garbage where what is signed belongs, one byte of it changed.
        assert!(!is_certificate(&[0x30, 0x06, 0x30, 0x00, 0x30, 0x00, 0x03, 0x00]));
        let mut garbage = vec![0x30, 0x2e, 0x30, 0x28];
        garbage.extend([0xff; 40]);
        garbage.extend([0x30, 0x00, 0x03, 0x00]);
        assert!(!is_certificate(&garbage));
        let version = der.windows(3).position(|w| w == [0xa0, 0x03, 0x02]).unwrap();
        let mut changed = der.clone();
        changed[version] = 0x04;
        assert!(!is_certificate(&changed));
        // A certificate made by another library (openssl, a CA's chain)
        // still is one.
        let chain = include_str!("../../tests/support/keys/rsa4096.pem");
        use rustls::pki_types::pem::PemObject;
        let der =
            rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes()).next().unwrap().unwrap();
        assert!(is_certificate(&der));
    }
}
