//! The config file as `authgate check` and a start read it: any text gives a
//! configuration or problems, never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A folder of this process's own on tmpfs, with a valid users file beside
/// the config, so that the config's own settings are what is read.
fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("authgate-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz folder");
        std::fs::write(dir.join("users.toml"), "[users]\n").expect("users file");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let path = folder().join("authgate.toml");
    std::fs::write(&path, data).expect("write config");
    if let Err(e) = authgate::config::load(&path) {
        for p in e.problems {
            assert!(!p.message.is_empty());
        }
    }
});
