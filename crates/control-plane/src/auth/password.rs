//! Password hashes for `POST /login`: Argon2id with the crate's defaults (19 MiB, 2 passes,
//! the OWASP minimum), stored as PHC strings that carry their own parameters.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};

/// Passwords shorter than this (in characters) are refused when set.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longer ones are refused before hashing (hashing is deliberately slow).
pub const MAX_PASSWORD_LEN: usize = 1024;

pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `stored`; a missing hash (no such user, or a user without a
/// password) costs the same time as a wrong password, so that timing reveals nothing.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("not a real password").unwrap_or_default());
    let (candidate, real) = match stored {
        Some(stored) => (stored, true),
        None => (dummy.as_str(), false),
    };
    if password.chars().count() > MAX_PASSWORD_LEN {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(candidate) else {
        return false;
    };
    let matches = argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    matches && real
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_matches_its_hash_only() {
        let stored = super::hash("correct horse battery").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(super::verify("correct horse battery", Some(&stored)));
        assert!(!super::verify("correct horse battery!", Some(&stored)));
        assert!(!super::verify("correct horse battery", None));
        assert!(!super::verify("x", Some("not a hash")));
    }
}
