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

/// Whether `der` is shaped like a certificate: one SEQUENCE of a SEQUENCE
/// (what is signed), a SEQUENCE (the algorithm) and a BIT STRING (the
/// signature). Not a full check: what a client makes of the rest is its own.
pub fn is_certificate(der: &[u8]) -> bool {
    tbs(der).is_some()
}

/// The validity period of the certificate `der`; `None` when it cannot be
/// read.
pub fn validity(der: &[u8]) -> Option<Validity> {
    let tbs = tbs(der)?;
    let rest = match expect(tbs, VERSION) {
        Some((_, rest)) => rest,
        None => tbs,
    };
    let (_, rest) = expect(rest, INTEGER)?; // serialNumber
    let (_, rest) = expect(rest, SEQUENCE)?; // signature
    let (_, rest) = expect(rest, SEQUENCE)?; // issuer
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (tag, before, rest) = element(validity)?;
    let not_before = time(tag, before)?;
    let (tag, after, rest) = element(rest)?;
    let not_after = time(tag, after)?;
    rest.is_empty().then_some(Validity { not_before, not_after })
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), the forms RFC 5280 §4.1.2.5 allows.
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let century = if digits < "50" { "20" } else { "19" };
            format!("{century}{digits}")
        }
        (GENERALIZED_TIME, 14) => digits.to_owned(),
        _ => return None,
    };
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(0..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    );
    humantime::parse_rfc3339(&rfc3339).ok()
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
        let cert = params.self_signed(&key).unwrap();
        let v = validity(cert.der()).unwrap();
        assert_eq!(v.not_before, at(1_577_836_800));
        // After 2049: a GeneralizedTime.
        assert_eq!(v.not_after, at(2_571_696_000));
        assert!(is_certificate(cert.der()));
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
    }
}
