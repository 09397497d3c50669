//! Native code the control plane compiled for this node's engine: its attestation (an
//! ES256 JWT of `{wasm_sha256, engine_hash, native_sha256}`) is checked against the control
//! plane's key, which the node got over its mTLS session, and the bytes against the hashes
//! it names. Only then does the runtime get the code; anything else is refused and the
//! artifact compiled here.

use edgefn_proto::sync::{PRECOMPILED_AUDIENCE, PrecompiledClaims};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest as _, Sha256};

/// Attestations larger than this are refused unread (ours are ~500 bytes).
const MAX_ATTESTATION_BYTES: usize = 4096;

/// Checks that `native` is what the control plane holding `key_pem` compiled of the
/// artifact `wasm_sha256` for the engine `engine_hash`. Returns the native code's SHA-256.
pub fn verify(
    attestation: &str,
    key_pem: &str,
    wasm_sha256: &str,
    engine_hash: &str,
    native: &[u8],
) -> Result<String, String> {
    if attestation.is_empty() {
        return Err("no attestation came with the code".into());
    }
    if attestation.len() > MAX_ATTESTATION_BYTES {
        return Err("the attestation is too large".into());
    }
    let key = DecodingKey::from_ec_pem(key_pem.as_bytes())
        .map_err(|e| format!("the control plane's signing key is unusable: {e}"))?;
    // ES256 only: `alg: none` or an HMAC "signed" with the public key is refused.
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.set_audience(&[PRECOMPILED_AUDIENCE]);
    validation.set_required_spec_claims(&["aud"]);
    let claims = jsonwebtoken::decode::<PrecompiledClaims>(attestation, &key, &validation)
        .map_err(|e| format!("the attestation does not hold: {e}"))?
        .claims;
    if claims.wasm_sha256 != wasm_sha256 {
        return Err(format!(
            "the attestation is for artifact {}, not {wasm_sha256}",
            claims.wasm_sha256
        ));
    }
    if claims.engine_hash != engine_hash {
        return Err(format!(
            "the attestation is for engine {}, not this node's {engine_hash}",
            claims.engine_hash
        ));
    }
    let actual = hex::encode(Sha256::digest(native));
    if actual != claims.native_sha256 {
        return Err(format!(
            "the code's SHA-256 is {actual}, the attestation names {}",
            claims.native_sha256
        ));
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    struct Key {
        private: EncodingKey,
        public_pem: String,
    }

    fn key() -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Key {
            private: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            public_pem: pair.public_key_pem(),
        }
    }

    const NATIVE: &[u8] = b"native code";

    fn claims() -> PrecompiledClaims {
        PrecompiledClaims {
            iss: "edgefn".into(),
            aud: PRECOMPILED_AUDIENCE.into(),
            wasm_sha256: "a".repeat(64),
            engine_hash: "0123456789abcdef".into(),
            native_sha256: hex::encode(Sha256::digest(NATIVE)),
            iat: 1,
        }
    }

    fn sign(key: &Key, claims: &PrecompiledClaims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key.private).unwrap()
    }

    fn check(key: &Key, attestation: &str, native: &[u8]) -> Result<String, String> {
        verify(
            attestation,
            &key.public_pem,
            &"a".repeat(64),
            "0123456789abcdef",
            native,
        )
    }

    #[test]
    fn code_the_attestation_names_passes() {
        let key = key();
        let native_sha = check(&key, &sign(&key, &claims()), NATIVE).unwrap();
        assert_eq!(native_sha, claims().native_sha256);
    }

    #[test]
    fn changed_code_is_refused() {
        let key = key();
        let error = check(&key, &sign(&key, &claims()), b"native codf").unwrap_err();
        assert!(error.contains("SHA-256"), "{error}");
    }

    #[test]
    fn another_key_is_refused() {
        let (ours, theirs) = (key(), key());
        let error = check(&ours, &sign(&theirs, &claims()), NATIVE).unwrap_err();
        assert!(error.contains("does not hold"), "{error}");
    }

    #[test]
    fn another_artifact_engine_or_audience_is_refused() {
        let key = key();
        let mut other = claims();
        other.wasm_sha256 = "b".repeat(64);
        assert!(check(&key, &sign(&key, &other), NATIVE).is_err());
        let mut other = claims();
        other.engine_hash = "fedcba9876543210".into();
        assert!(check(&key, &sign(&key, &other), NATIVE).is_err());
        let mut other = claims();
        other.aud = "edgefn-node".into();
        assert!(check(&key, &sign(&key, &other), NATIVE).is_err());
    }

    #[test]
    fn unsigned_and_missing_attestations_are_refused() {
        let key = key();
        let signed = sign(&key, &claims());
        let unsigned = &signed[..=signed.rfind('.').unwrap()];
        assert!(check(&key, unsigned, NATIVE).is_err());
        assert!(check(&key, "", NATIVE).is_err());
        assert!(check(&key, &"x".repeat(5000), NATIVE).is_err());
    }
}
