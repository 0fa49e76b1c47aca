//! Hashing new passwords (argon2id) and verifying stored ones.

use argon2::password_hash::{PasswordHash, PasswordHashString, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use rand_core::OsRng;

use super::basic::nfc;

/// Default argon2id parameters for new hashes (OWASP: m=19 MiB, t=2, p=1).
pub fn default_params() -> Params {
    // These constants are within argon2's documented bounds.
    Params::new(19_456, 2, 1, None).unwrap_or_default()
}

/// Hashes `password` (NFC-normalised first) as an argon2id PHC string.
///
/// # Errors
/// Fails only if argon2 rejects the parameters or the password length.
pub fn hash_password(
    password: &str,
    params: Params,
) -> Result<PasswordHashString, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let hash = argon.hash_password(nfc(password).as_bytes(), &salt)?;
    Ok(hash.serialize())
}

/// Verifies `password` against a stored argon2 PHC string, in constant time
/// (the comparison of the derived keys is constant-time inside `argon2`).
pub fn verify_argon2(stored: &PasswordHashString, password: &str) -> bool {
    let hash: PasswordHash<'_> = stored.password_hash();
    Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
}

/// Parses and checks a stored argon2 PHC string at load time.
///
/// # Errors
/// A message (never containing the hash) when it is not a usable argon2 hash.
pub fn parse_argon2(phc: &str) -> Result<(PasswordHashString, Params), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a valid PHC string ({e})"))?;
    match hash.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => {}
        other => {
            return Err(format!(
                "unsupported algorithm `{}`; use argon2id",
                other.chars().take(20).collect::<String>()
            ));
        }
    }
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err("PHC string has no salt or no hash".into());
    }
    let params = Params::try_from(&hash).map_err(|e| format!("bad argon2 parameters ({e})"))?;
    Ok((hash.serialize(), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    #[test]
    fn hash_then_verify_round_trips_with_normalisation() {
        let h = hash_password("pa\u{0308}ss", tiny()).unwrap();
        assert!(h.as_str().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(verify_argon2(&h, "päss"));
        assert!(!verify_argon2(&h, "pass"));
    }

    #[test]
    fn parse_rejects_non_argon2_and_garbage() {
        assert!(parse_argon2("nope").is_err());
        assert!(parse_argon2("$2y$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ012345").is_err());
        let h = hash_password("x", tiny()).unwrap();
        assert!(parse_argon2(h.as_str()).is_ok());
    }
}
