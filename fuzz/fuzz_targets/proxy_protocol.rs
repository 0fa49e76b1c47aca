//! PROXY protocol headers as a balancer (or anyone who reaches the port)
//! sends them: any bytes are an address, none, or an error, never a panic.
#![no_main]

use authgate::server::proxy_protocol::{parse_v1, parse_v2};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_v1(data);
    if let Some((head, rest)) = data.split_first_chunk::<16>() {
        let _ = parse_v2(head, rest);
    }
});
