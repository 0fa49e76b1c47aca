//! Hashing new passwords (argon2id) and verifying stored ones.

use argon2::password_hash;
use argon2::password_hash::{Output, ParamsString, PasswordHash, PasswordHashString, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand_core::OsRng;

use super::basic::nfc;

/// Default argon2id parameters for new hashes (OWASP: m=19 MiB, t=2, p=1).
pub fn default_params() -> Params {
    // These constants are within argon2's documented bounds.
    Params::new(19_456, 2, 1, None).unwrap_or_default()
}

/// Longest password, in bytes, that `hash-password` and `users` accept: any
/// user name with it still fits the `Proxy-Authorization` value the proxy
/// reads ([`super::basic::MAX_HEADER_LEN`], base64 included). A longer one
/// could be hashed but never used to log in.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a new password before it is hashed: not empty, and short enough
/// to be sent (see [`MAX_PASSWORD_BYTES`]).
///
/// # Errors
/// A one-line reason.
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("empty password refused".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(too_long());
    }
    Ok(())
}

/// Why a password over [`MAX_PASSWORD_BYTES`] is refused, however it came.
pub fn too_long() -> String {
    format!(
        "password longer than {MAX_PASSWORD_BYTES} bytes refused: no client could send it in a Proxy-Authorization header authgate accepts"
    )
}

/// Hashes `password` (NFC-normalised first) as an argon2id PHC string.
///
/// # Errors
/// argon2 rejects the parameters or the password length, or the memory
/// `params` ask for cannot be allocated (a memory limit).
pub fn hash_password(password: &str, params: Params) -> Result<PasswordHashString, String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut memory = Vec::new();
    if !make_room(&mut memory, params.block_count()) {
        return Err(no_memory(params.m_cost()));
    }
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| e.to_string())?;
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let output = Output::init_with(len, |out| {
        Ok(argon.hash_password_into_with_memory(nfc(password).as_bytes(), salt_bytes, out, &mut memory)?)
    })
    .map_err(|e| e.to_string())?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.serialize())
}

/// Grows `memory` to `blocks` blocks of argon2 working memory, or says
/// that it cannot. A vector's own growth aborts the whole process when the
/// allocation fails (under `ulimit -v`, a container's memory limit): one
/// login with a hash whose `m` the process could not get took the proxy
/// down, and `hash-password` died with a backtrace (probe 349).
fn make_room(memory: &mut Vec<Block>, blocks: usize) -> bool {
    let Some(more) = blocks.checked_sub(memory.len()) else { return true };
    if memory.try_reserve_exact(more).is_err() {
        return false;
    }
    memory.resize(blocks, Block::default());
    true
}

/// Why a hash could not be computed: its memory could not be allocated.
fn no_memory(kib: u32) -> String {
    format!("the {kib} KiB of memory its argon2 cost (m) asks for could not be allocated")
}

/// Verifies `password` against a stored argon2 PHC string, in constant time
/// (the comparison of the derived keys is constant-time inside `argon2`).
pub fn verify_argon2(stored: &PasswordHashString, password: &str) -> bool {
    verify_argon2_in(stored, password, &mut Memory::default())
}

/// Working memory for argon2, reused across verifications.
///
/// argon2 needs `m_cost` KiB per verification (19 MiB by default). Allocating
/// that per attempt makes the allocator keep freed arenas per blocking thread,
/// so a flood of wrong passwords grows the process by hundreds of MiB; reusing
/// one buffer per verification slot keeps memory flat.
#[derive(Default)]
pub struct Memory(Vec<Block>);

/// Like [`verify_argon2`], computing into `memory` instead of a fresh
/// allocation. The derived key is compared in constant time
/// (`password_hash::Output` equality).
pub fn verify_argon2_in(stored: &PasswordHashString, password: &str, memory: &mut Memory) -> bool {
    let hash: PasswordHash<'_> = stored.password_hash();
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else { return false };
    // A string without `v=` is version 16, as the reference implementation
    // reads (and writes) it; read as 19 (the `argon2` crate's default), such
    // a hash loaded without a word and never verified (probe 139).
    let version = match hash.version {
        None => Version::V0x10,
        Some(v) => match Version::try_from(v) {
            Ok(v) => v,
            Err(_) => return false,
        },
    };
    let Ok(params) = Params::try_from(&hash) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let blocks = params.block_count();
    if !make_room(&mut memory.0, blocks) {
        static NO_MEMORY: crate::telemetry::Every =
            crate::telemetry::Every::new(10, "a login refused: its hash's memory could not be allocated");
        if let Some(held) = NO_MEMORY.pass() {
            tracing::error!(
                held_back = held,
                "a login refused (as a wrong password is): {}; lower that hash's m, or give the process more memory",
                no_memory(params.m_cost())
            );
        }
        return false;
    }
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else { return false };
    let argon = Argon2::new(algorithm, version, params);
    if argon.hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory.0[..blocks]).is_err()
    {
        return false;
    }
    password_hash::Output::new(out).is_ok_and(|computed| computed == expected)
}

/// The base64 characters of the longest tag a PHC string holds: 64 bytes,
/// unpadded.
const MAX_TAG_CHARS: usize = 86;

/// Parses and checks a stored argon2 PHC string at load time.
///
/// # Errors
/// A message (never containing the hash) when it is not a usable argon2 hash.
pub fn parse_argon2(phc: &str) -> Result<(PasswordHashString, Params), String> {
    // A known scheme is named even when the rest of its string is not PHC
    // (`$apr1$…`, `$5$rounds=…`: their salts were refused first, as
    // "salt invalid").
    let first = phc.strip_prefix('$').and_then(|rest| rest.split('$').next());
    if let Some(known) = OTHER_SCHEMES.iter().find(|s| Some(**s) == first) {
        return Err(format!("unsupported algorithm `{known}`; use argon2id"));
    }
    // A tag past the 64 bytes a PHC string holds (two hashes run together,
    // a tail pasted twice) was "not a valid PHC string (invalid Base64
    // length)" (probe 122). Its length is said instead; not the text.
    // (The tag is the last of `$id$v=19$params$salt$tag`, or of
    // `$id$params$salt$tag`: a last field that is a long salt, with no tag
    // after it, was taken for one; probe 129.)
    let fields: Vec<&str> = phc.split('$').collect();
    let with_tag = if fields.get(2).is_some_and(|f| f.starts_with("v=")) { 6 } else { 5 };
    if let Some(tag) = fields.last().filter(|_| fields.len() == with_tag)
        && tag.len() > MAX_TAG_CHARS
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(format!(
            "its argon2 hash tag is {} base64 characters, more than the {MAX_TAG_CHARS} of 64 bytes, the most \
             a PHC string holds (`authgate hash-password` writes 32 bytes)",
            tag.len()
        ));
    }
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a valid PHC string ({})", unquoted(e)))?;
    match hash.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => {}
        // Named only when it is a scheme's (above): a password typed where
        // its hash belongs (`"$hunter2"`) reads as a PHC string of
        // algorithm `hunter2`, and a reload logs the message.
        _ => {
            return Err("unsupported algorithm (not named: the value may be a password); use argon2id".into());
        }
    }
    let Some(salt) = hash.salt.filter(|_| hash.hash.is_some()) else {
        return Err("PHC string has no salt or no hash".into());
    };
    // The salt is decoded at each login, as argon2 takes it: one that is
    // not canonical unpadded base64, or shorter than 8 bytes, loaded
    // without a word and could never verify (probe 329).
    let mut salt_bytes = [0u8; 64];
    match salt.decode_b64(&mut salt_bytes) {
        Ok(bytes) if bytes.len() >= argon2::MIN_SALT_LEN => {}
        Ok(bytes) => {
            return Err(format!(
                "its argon2 salt is {} bytes, fewer than the {} argon2 takes, so it can never verify; reset this password",
                bytes.len(),
                argon2::MIN_SALT_LEN
            ));
        }
        Err(_) => {
            return Err(
                "its argon2 salt is not canonical unpadded base64, so it can never verify; reset this password".into()
            );
        }
    }
    // Only the two versions argon2 has (16 and 19): another one was taken
    // as 19 at login, a hash that could never verify.
    if let Some(v) = hash.version
        && Version::try_from(v).is_err()
    {
        return Err(format!("argon2 version v={v} does not exist (v=19 or v=16)"));
    }
    // Said in argon2's terms where the crate's own message is cryptic
    // ("value to short" for `m=8,p=2`), and a parameter given twice
    // (`m=8,m=9`, which the parser took) is refused.
    let mut names = Vec::new();
    for (name, _) in hash.params.iter() {
        if names.contains(&name.as_str()) {
            // (Not named: what a parameter's name holds may be typed there
            // by mistake; `m`, `t` and `p` are the ones argon2 has.)
            return Err("an argon2 parameter is given twice".to_owned());
        }
        names.push(name.as_str());
    }
    for name in ["t", "p"] {
        if hash.params.get_decimal(name) == Some(0) {
            return Err(format!("argon2 {name}=0: it is at least 1"));
        }
    }
    if let (Some(m), Some(p)) = (hash.params.get_decimal("m"), hash.params.get_decimal("p"))
        && u64::from(m) < 8 * u64::from(p)
    {
        return Err(format!("argon2 memory m={m} KiB is below 8 × p={p}, the least argon2 allows"));
    }
    let params = Params::try_from(&hash).map_err(|e| format!("bad argon2 parameters ({})", unquoted(e)))?;
    // A hash with costs beyond those authgate makes ([auth.argon2]) would
    // make each login of that user (and the dummy verification of unknown
    // names) allocate terabytes or run for days.
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST {
        return Err(format!(
            "argon2 costs m={}, t={}, p={} are beyond what authgate verifies (m ≤ {MAX_M_COST} KiB, t ≤ {MAX_T_COST}, p ≤ {MAX_P_COST}); reset this password",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok((hash.serialize(), params))
}

/// Hashing schemes other than argon2, named when a stored hash is of one
/// of them.
/// (bcrypt's `$2x$`, of hashes made by a buggy crypt_blowfish, and its
/// first `$2$`; `$2a$`, `$2b$` and `$2y$` are taken, see `store.rs`.)
const OTHER_SCHEMES: [&str; 16] = [
    "2x",
    "2",
    "scrypt",
    "pbkdf2",
    "pbkdf2-sha256",
    "pbkdf2-sha512",
    "yescrypt",
    "y",
    "7",
    "1",
    "5",
    "6",
    "md5",
    "sha1",
    "apr1",
    "balloon",
];

/// A PHC parse error in words that quote nothing of the value: the
/// crate's own say `contains invalid character: '!'`, a character of what
/// may be a password, and a reload logs the problem.
fn unquoted(e: password_hash::Error) -> String {
    use password_hash::errors::InvalidValue;
    let value = |v: InvalidValue| match v {
        InvalidValue::InvalidChar(_) => "holds a character it may not",
        InvalidValue::TooShort => "is too short",
        InvalidValue::TooLong => "is too long",
        _ => "is malformed",
    };
    match e {
        password_hash::Error::SaltInvalid(v) => format!("the salt {}", value(v)),
        password_hash::Error::ParamValueInvalid(v) => format!("a parameter's value {}", value(v)),
        e => e.to_string(),
    }
}

/// Largest argon2 memory cost (KiB, 4 GiB) for new hashes and stored ones.
pub const MAX_M_COST: u32 = 4_194_304;
/// Largest argon2 time cost.
pub const MAX_T_COST: u32 = 100;
/// Largest argon2 parallelism.
pub const MAX_P_COST: u32 = 64;
/// Largest bcrypt cost accepted in the users file: Apache's `htpasswd -C`
/// allows up to 17 (about 10 s a login on a small machine); cost 31 took
/// days per attempt and pinned a verification thread for as long.
pub const MAX_BCRYPT_COST: u32 = 17;

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters argon2 refuses are said in its terms: `m` below 8 × `p`
    /// (the crate said "value to short"), a parameter given twice (taken,
    /// the last one winning).
    #[test]
    fn bad_parameters_are_said_plainly() {
        let phc = |params: &str| format!("$argon2id$v=19${params}$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA");
        let err = |params: &str| parse_argon2(&phc(params)).err().unwrap_or_default();
        assert_eq!(err("m=8,t=1,p=2"), "argon2 memory m=8 KiB is below 8 × p=2, the least argon2 allows");
        assert_eq!(err("m=64,t=1,p=65"), "argon2 memory m=64 KiB is below 8 × p=65, the least argon2 allows");
        assert_eq!(err("m=8,m=9,t=1,p=1"), "an argon2 parameter is given twice");
        assert_eq!(err("m=8,t=0,p=1"), "argon2 t=0: it is at least 1");
        assert_eq!(err("m=8,t=1,p=0"), "argon2 p=0: it is at least 1");
        assert!(parse_argon2(&phc("m=16,t=1,p=2")).is_ok());
    }

    /// A salt argon2 cannot take is refused at load: it loaded, and its
    /// user could never log in (probe 329). Each of these failed at
    /// verification with the right password.
    #[test]
    fn a_salt_that_can_never_verify_is_refused() {
        let phc = |salt: &str| {
            format!("$argon2id$v=19$m=256,t=1,p=1${salt}$1A6w6R1dTPDTfeGl+ZTNF2Emnq/SgziHTggczddKBes")
        };
        let err = |salt: &str| parse_argon2(&phc(salt)).err().unwrap_or_default();
        assert!(parse_argon2(&phc("c2FsdHNhbHQ")).is_ok(), "8 bytes");
        assert!(err("c2FsdHNhbA").starts_with("its argon2 salt is 7 bytes, fewer than the 8"));
        assert!(err("c2FsdHNh").starts_with("its argon2 salt is 6 bytes"));
        // A length base64 cannot have; bits left over that are not zero.
        for salt in ["c2FsdHNhb", "c2FsdHNhbHR", "c2FsdHNhbH"] {
            assert!(err(salt).starts_with("its argon2 salt is not canonical unpadded base64"), "{salt}");
        }
        // What `authgate hash-password` writes (a 16-byte salt) loads.
        let hash = hash_password("pw", Params::new(256, 1, 1, None).unwrap()).unwrap();
        assert!(parse_argon2(hash.as_str()).is_ok());
    }

    #[test]
    fn the_longest_accepted_password_fits_the_header_with_the_longest_user_name() {
        use base64::Engine;
        let user = "\u{1D11E}".repeat(64); // 64 characters of 4 bytes each
        let password = "p".repeat(MAX_PASSWORD_BYTES);
        assert!(check_new_password(&password).is_ok());
        assert!(check_new_password(&format!("{password}p")).is_err());
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let creds = super::super::basic::parse(header.as_bytes()).expect("fits the parser's limit");
        assert_eq!(creds.password.len(), MAX_PASSWORD_BYTES);
    }

    fn tiny() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    /// libargon2 (argon2-cffi 23) wrote these with `version=16`; it
    /// verifies them with the `v=16$` left out too, and not as `v=19`.
    #[test]
    fn a_hash_without_a_version_is_version_16() {
        for phc in [
            "$argon2i$m=8,t=2,p=1$c29tZXNhbHQ$4bmP+thg+TOoSS0PXrrU219xl35YCeBln3sv5cp5bZY",
            "$argon2i$v=16$m=8,t=2,p=1$c29tZXNhbHQ$4bmP+thg+TOoSS0PXrrU219xl35YCeBln3sv5cp5bZY",
            "$argon2id$m=8,t=2,p=1$c29tZXNhbHQ$+1ErlofTy8evXbCAGAVkI4oktQ1uRN2sCRO0j3qapBA",
        ] {
            let (h, _) = parse_argon2(phc).unwrap();
            assert!(verify_argon2(&h, "password"), "{phc}");
            assert!(!verify_argon2(&h, "passwort"), "{phc}");
            let v19 = phc.replacen("$m=", "$v=19$m=", 1).replacen("$v=16$v=19", "$v=19", 1);
            let (h, _) = parse_argon2(&v19).unwrap();
            assert!(!verify_argon2(&h, "password"), "{v19}");
        }
    }

    #[test]
    fn hash_then_verify_round_trips_with_normalisation() {
        let h = hash_password("pa\u{0308}ss", tiny()).unwrap();
        assert!(h.as_str().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(verify_argon2(&h, "päss"));
        assert!(!verify_argon2(&h, "pass"));
        let mut mem = Memory::default();
        assert!(verify_argon2_in(&h, "päss", &mut mem));
        assert!(!verify_argon2_in(&h, "pass", &mut mem));
        // The default parameters, with memory reused across calls.
        let h2 = hash_password("s3cret", Params::new(1024, 2, 1, None).unwrap()).unwrap();
        assert!(verify_argon2_in(&h2, "s3cret", &mut mem));
        assert!(!verify_argon2_in(&h2, "s3creT", &mut mem));
        assert!(verify_argon2_in(&h, "päss", &mut mem), "a smaller hash after a larger one");
    }

    #[test]
    fn parse_rejects_non_argon2_and_garbage() {
        assert!(parse_argon2("nope").is_err());
        assert!(parse_argon2("$2y$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ012345").is_err());
        assert_eq!(
            parse_argon2("$2x$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ012345").map(|_| ()),
            Err("unsupported algorithm `2x`; use argon2id".to_owned())
        );
        let h = hash_password("x", tiny()).unwrap();
        assert!(parse_argon2(h.as_str()).is_ok());
    }

    /// A tag past 64 bytes is said as such, with its length and not its
    /// text (it was "invalid Base64 length"); 64 bytes still parse.
    #[test]
    fn a_tag_too_long_is_said_plainly() {
        let phc = |bytes: usize| {
            format!("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ${}", "A".repeat(bytes * 4 / 3 + 1))
        };
        assert!(parse_argon2(&phc(64)).is_ok(), "{:?}", parse_argon2(&phc(64)).err());
        for bytes in [65, 96, 128] {
            let err = parse_argon2(&phc(bytes)).err().unwrap_or_default();
            let chars = bytes * 4 / 3 + 1;
            assert!(
                err.starts_with(&format!(
                    "its argon2 hash tag is {chars} base64 characters, more than the 86"
                )),
                "{err}"
            );
            assert!(!err.contains("AAAA"), "{err}");
        }
        // The same without the version field.
        let unversioned = format!("$argon2id$m=64,t=1,p=1$c2FsdHNhbHQ${}", "A".repeat(88));
        assert!(parse_argon2(&unversioned).err().unwrap_or_default().contains("tag is 88 base64 characters"));
        // A long salt with no tag after it is no tag (it was said to be
        // one, probe 129).
        let no_tag = format!("$argon2id$v=19$m=64,t=1,p=1${}", "A".repeat(100));
        let err = parse_argon2(&no_tag).err().unwrap_or_default();
        assert!(!err.contains("tag"), "{err}");
    }
}
