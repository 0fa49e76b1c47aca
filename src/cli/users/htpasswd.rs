//! `users import-htpasswd`: bcrypt (and argon2) entries in, every other scheme refused.

use super::*;

/// `users import-htpasswd FILE`: bcrypt and argon2 entries are added as they are; other
/// schemes, invalid names, and names already present (never overwritten)
/// are refused one line each. The importable ones are written in one go.
pub(super) fn import_htpasswd(
    file: &mut UsersFile,
    source: &Path,
    groups: Vec<String>,
) -> Result<Outcome, UsersError> {
    let text = crate::config::file::read_file(source)
        .map_err(|e| UsersError::Io { path: source.to_path_buf(), what: "cannot read", source: e })
        .and_then(|b| crate::config::file::utf8_text(b).map_err(|at| super::not_utf8(source, at)))?;
    // A byte order mark (as Windows editors write) made the first name
    // `\u{feff}name`, refused (probe 114).
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut doc = file.take_doc();
    // Sets and a running position, not a search of the file per line: an
    // import of 20,000 lines took 26 s.
    let present: std::collections::HashSet<String> = doc
        .get("users")
        .and_then(Item::as_table_like)
        .map(|users| users.iter().map(|(k, _)| nfc(k)).collect())
        .unwrap_or_default();
    let mut imported: Vec<String> = Vec::new();
    let mut bcrypt = false;
    let mut seen = std::collections::HashSet::new();
    let mut position = max_position(doc.as_table()) + 1;
    let mut refusals = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", shown_path(source), i + 1);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((raw_name, hash)) = line.split_once(':').map(|(n, h)| (n, h.trim())) else {
            refusals.push(format!("{at}: not a `name:hash` line; skipped"));
            continue;
        };
        let name = nfc(raw_name);
        if let Err(m) = check_name(&name) {
            refusals.push(format!("{at}: {}; skipped", refused_name(&name, &m, shown)));
            continue;
        }
        if present.contains(&name) {
            refusals.push(format!(
                "{at}: {} already exists in {}; not overwritten (change its password with `{} passwd {}`)",
                user_named(&name),
                shown_path(&file.path),
                file.cmd,
                name_arg_shown(&name)
            ));
            continue;
        }
        if seen.contains(&name) {
            refusals
                .push(format!("{at}: {} appears again; only its first entry is imported", user_named(&name)));
            continue;
        }
        match htpasswd_scheme(hash) {
            Ok(()) => {
                let user = NewUser { hash: hash.to_owned(), groups: groups.clone(), expires: None };
                add_user_at(&mut doc, &name, user, position, imported.last().map(String::as_str))?;
                position += 1;
                seen.insert(name.clone());
                imported.push(name);
                bcrypt |= hash.starts_with("$2");
            }
            Err(scheme) => refusals.push(format!(
                "{at}: {}: {scheme} hashes cannot be imported (authgate verifies argon2 and bcrypt within bounds only); not imported: reset this user with `{} add {}`, which sets a new password",
                user_named(&name),
                file.cmd,
                name_arg_shown(&name)
            )),
        }
    }
    let mut stdout = String::new();
    if imported.is_empty() {
        let _ = writeln!(
            stdout,
            "imported no users from {}; {} unchanged",
            shown_path(source),
            shown_path(&file.path)
        );
    } else {
        file.save(doc)?;
        let _ = writeln!(
            stdout,
            "imported {} user(s) from {} into {}: {}{}",
            imported.len(),
            shown_path(source),
            shown_path(&file.path),
            imported
                .iter()
                .map(|n| if crate::config::may_hold_a_password(n) {
                    "(a name not shown)"
                } else {
                    n.as_str()
                })
                .collect::<Vec<_>>()
                .join(", "),
            if bcrypt {
                " (bcrypt entries are verified as a legacy scheme until `users passwd` replaces them)"
            } else {
                ""
            }
        );
    }
    Ok(Outcome { stdout, refused: refusals, ..Outcome::default() })
}

/// `Ok` for a bcrypt or argon2 hash authgate can verify, else the scheme's name.
/// `$2a$` is accepted with `$2y$`/`$2b$`: it is the same bcrypt and the
/// users file accepts it too.
pub(super) fn htpasswd_scheme(hash: &str) -> Result<(), &'static str> {
    let is_crypt_char = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        return match StoredHash::parse(hash) {
            Ok(StoredHash::Bcrypt(_)) => Ok(()),
            Err(e) if e.contains("beyond") => Err("bcrypt (cost above 17)"),
            _ => Err("malformed bcrypt"),
        };
    }
    // What the users file holds anyway (another tool's argon2 output).
    if hash.starts_with("$argon2") {
        return match StoredHash::parse(hash) {
            Ok(_) => Ok(()),
            Err(e) if e.contains("beyond") => Err("argon2 (costs above authgate's bounds)"),
            Err(_) => Err("malformed argon2"),
        };
    }
    Err(if hash.starts_with("$apr1$") {
        "MD5-apr1"
    } else if hash.starts_with("{SHA}") {
        "SHA1"
    } else if hash.starts_with("$1$") {
        "MD5-crypt"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "SHA-crypt"
    } else if hash.len() == 13 && hash.chars().all(is_crypt_char) {
        "crypt (DES)"
    } else {
        "unrecognised (or plain-text)"
    })
}
