//! The certificate reader used for expiry checks of the TLS listener's
//! chain: any bytes are a certificate's dates or not one, never a panic.
#![no_main]

use authgate::server::x509::{is_certificate, rfc3339, validity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let v = validity(data);
    assert_eq!(v.is_some(), is_certificate(data));
    if let Some(v) = v {
        let _ = (rfc3339(v.not_before), rfc3339(v.not_after));
    }
});
