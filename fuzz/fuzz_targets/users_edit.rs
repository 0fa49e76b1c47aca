//! `authgate users remove/disable/enable` on any valid users file: the
//! command changes exactly the user it names, in exactly the way it says,
//! and leaves every other user as it was; refused, it leaves the file
//! byte for byte as it was. (The first input byte picks the command and the
//! user; the rest is the file.)
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use authgate::auth::store::User;
use authgate::cli::users::{Action, run};
use authgate::config::parse_users;
use libfuzzer_sys::fuzz_target;

/// A folder of this process's own, with a config that names `users.toml`.
fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("authgate-fuzz-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz folder");
        std::fs::write(dir.join("authgate.toml"), "[auth]\nusers_file = \"users.toml\"\n").expect("config");
        dir
    })
}

/// Name to (fingerprint, groups, disabled, expires).
fn users(source: &str) -> Option<BTreeMap<String, (u64, Vec<String>, bool, Option<std::time::SystemTime>)>> {
    let list: Vec<User> = parse_users(Path::new("users.toml"), source, Path::new("authgate.toml")).ok()?;
    Some(
        list.into_iter()
            .map(|u| {
                let groups = u.groups.iter().map(|g| g.to_string()).collect();
                (u.name.to_string(), (u.fingerprint, groups, u.disabled, u.expires))
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(source) = std::str::from_utf8(rest) else { return };
    let Some(before) = users(source) else { return };
    let names: Vec<&String> = before.keys().collect();
    // A name not in the file now and then: it must be refused.
    let name = if names.is_empty() || pick & 0x40 != 0 {
        "nobody-here".to_owned()
    } else {
        names[usize::from(pick >> 2 & 0x0f) % names.len()].clone()
    };
    let action = match pick & 3 {
        0 | 3 => Action::Remove { name: name.clone() },
        1 => Action::Disable { name: name.clone() },
        _ => Action::Enable { name: name.clone() },
    };
    let kind = pick & 3;
    let dir = folder();
    let file = dir.join("users.toml");
    std::fs::write(&file, rest).expect("write users file");
    let result = run(&dir.join("authgate.toml"), action);
    let after_bytes = std::fs::read(&file).expect("read users file");
    let Ok(outcome) = result else {
        assert_eq!(after_bytes, rest, "a refused command changed the file");
        return;
    };
    assert!(before.contains_key(&name), "a command on an unknown user went ahead");
    if !outcome.written {
        assert_eq!(after_bytes, rest, "a command that wrote nothing changed the file");
    }
    let after_text = String::from_utf8(after_bytes).expect("the file stays UTF-8");
    let after = users(&after_text).unwrap_or_else(|| panic!("the new file does not read:\n{after_text}"));
    let mut expected = before.clone();
    match kind {
        0 | 3 => {
            expected.remove(&name);
            assert_eq!(after, expected, "remove {name:?}:\n{source}\n---\n{after_text}");
        }
        _ => {
            let disabled = kind == 1;
            let (Some(old), Some(new)) = (before.get(&name), after.get(&name)) else {
                panic!("{name:?} is gone:\n{after_text}");
            };
            assert_eq!(new.2, disabled, "{name:?} disabled is {}:\n{after_text}", new.2);
            assert_eq!((&new.1, new.3), (&old.1, old.3), "{name:?}'s groups or expiry changed");
            let mut others_after = after.clone();
            others_after.remove(&name);
            expected.remove(&name);
            assert_eq!(others_after, expected, "another user changed:\n{source}\n---\n{after_text}");
        }
    }
});
