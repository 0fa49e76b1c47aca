//! The users file as the proxy and `authgate users` read it: any text gives
//! users or problems, never a panic, and every problem points inside the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let path = Path::new("users.toml");
    if let Err(e) = authgate::config::parse_users(path, source, Path::new("authgate.toml")) {
        let lines = source.split('\n').count();
        for p in e.problems {
            assert!(p.line <= lines, "line {} of {lines}: {}", p.line, p.message);
            assert!(p.line == 0 || p.col >= 1, "column 0 on line {}: {}", p.line, p.message);
            assert!(!p.message.is_empty());
        }
    }
});
