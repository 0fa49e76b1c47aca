//! What the proxy reads from a request head before anything else: the
//! `Proxy-Authorization` value, the target's authority and host, a `Host`
//! field. Never a panic, and:
//! - the verified-credential cache's key (`canonical_token`) stands for one
//!   login: a header parses to the same credentials as its canonical token,
//!   so two headers that share a cache entry carry the same login;
//! - a parsed target prints in a form that parses back to itself, the form
//!   the access log, the rules and the egress check see.
#![no_main]

use authgate::auth::basic::{canonical_token, parse};
use authgate::target::{parse_authority, parse_host, valid_host_field};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    if let Some(token) = canonical_token(data) {
        let again = parse(&[b"Basic ", token].concat());
        match (&parsed, &again) {
            (Ok(a), Ok(b)) => assert!(a == b, "one cache key, two logins"),
            (Err(_), Err(_)) => {}
            _ => panic!("{:?} parsed as {:?}, its cache key as {:?}", data, parsed.is_ok(), again.is_ok()),
        }
    }
    let _ = valid_host_field(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(target) = parse_authority(text) {
        assert_ne!(target.port, 0);
        assert_eq!(parse_authority(&target.to_string()), Ok(target.clone()), "{text:?}");
    }
    if let Ok(host) = parse_host(text) {
        assert_eq!(parse_host(&host.to_string()), Ok(host.clone()), "{text:?}");
    }
    let _ = authgate::cli::explain::parse_target(text);
});
