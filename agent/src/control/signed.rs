//! Signed remote configs: the config map carries `selfops.yaml` and a
//! detached Ed25519 signature `selfops.yaml.sig` over the YAML's SHA-256.
//! Only keys from the local `control.trusted_keys` are believed, so a
//! compromised server cannot become a trusted root.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use selfops_proto::opamp::AgentRemoteConfig;
use serde::{Deserialize, Deserializer};
use sha2::{Digest as _, Sha256};

/// Config map keys.
pub const CONFIG_FILE: &str = "selfops.yaml";
pub const SIGNATURE_FILE: &str = "selfops.yaml.sig";

/// Why a remote config was not believed; each a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("no {CONFIG_FILE} in the remote config")]
    Missing,
    #[error("unsigned: no {SIGNATURE_FILE} in the remote config")]
    Unsigned,
    #[error("config_hash is not the SHA-256 of {CONFIG_FILE}")]
    WrongHash,
    #[error("{SIGNATURE_FILE} is not an Ed25519 signature")]
    BadSignature,
    #[error("signature does not verify against any trusted key")]
    Untrusted,
    #[error("{CONFIG_FILE} is not UTF-8")]
    NotText,
}

/// An Ed25519 public key from `control.trusted_keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedKey(VerifyingKey);

impl TrustedKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| format!("not an Ed25519 public key: {e}"))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedKey({})", self.to_base64())
    }
}

impl<'de> Deserialize<'de> for TrustedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The signature file's body: base64 text, or the 64 raw bytes.
fn parse_signature(body: &[u8]) -> Result<Signature, Rejected> {
    if let Ok(raw) = <[u8; 64]>::try_from(body) {
        return Ok(Signature::from_bytes(&raw));
    }
    let text = std::str::from_utf8(body).map_err(|_| Rejected::BadSignature)?;
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| Rejected::BadSignature)?;
    let raw = <[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| Rejected::BadSignature)?;
    Ok(Signature::from_bytes(&raw))
}

/// The YAML of `remote` when its signature verifies against one of `keys`.
/// An empty `config_hash` is allowed (servers need not send one); a set one
/// must be the YAML's SHA-256.
pub fn verify(remote: &AgentRemoteConfig, keys: &[TrustedKey]) -> Result<String, Rejected> {
    let files = remote.config.as_ref().map(|c| &c.config_map);
    let yaml = files
        .and_then(|f| f.get(CONFIG_FILE))
        .ok_or(Rejected::Missing)?;
    let digest = sha256(&yaml.body);
    if !remote.config_hash.is_empty() && remote.config_hash != digest {
        return Err(Rejected::WrongHash);
    }
    let signature = files
        .and_then(|f| f.get(SIGNATURE_FILE))
        .ok_or(Rejected::Unsigned)?;
    let signature = parse_signature(&signature.body)?;
    if !keys
        .iter()
        .any(|key| key.0.verify_strict(&digest, &signature).is_ok())
    {
        return Err(Rejected::Untrusted);
    }
    String::from_utf8(yaml.body.clone()).map_err(|_| Rejected::NotText)
}

/// A signing key (the fleet side and tests): 32 secret bytes, base64.
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn generate() -> Self {
        Self(SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "an Ed25519 secret key is 32 bytes".to_owned())?;
        Ok(Self(SigningKey::from_bytes(&bytes)))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    pub fn public(&self) -> TrustedKey {
        TrustedKey(self.0.verifying_key())
    }

    /// Base64 detached signature over the SHA-256 of `yaml`.
    pub fn sign(&self, yaml: &[u8]) -> String {
        STANDARD.encode(self.0.sign(&sha256(yaml)).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use selfops_proto::opamp::{AgentConfigFile, AgentConfigMap};

    use super::*;

    fn remote(files: &[(&str, &[u8])], hash: Vec<u8>) -> AgentRemoteConfig {
        AgentRemoteConfig {
            config: Some(AgentConfigMap {
                config_map: files
                    .iter()
                    .map(|(name, body)| {
                        (
                            (*name).to_owned(),
                            AgentConfigFile {
                                body: body.to_vec(),
                                content_type: String::new(),
                            },
                        )
                    })
                    .collect(),
            }),
            config_hash: hash,
        }
    }

    const YAML: &[u8] = b"profile: { frequency_hz: 49 }\n";

    #[test]
    fn signed_by_a_trusted_key_verifies() {
        let key = SecretKey::generate();
        let sig = key.sign(YAML);
        let config = remote(
            &[(CONFIG_FILE, YAML), (SIGNATURE_FILE, sig.as_bytes())],
            sha256(YAML).to_vec(),
        );
        assert_eq!(verify(&config, &[key.public()]).unwrap().as_bytes(), YAML);
        // No hash sent is fine too.
        let config = remote(
            &[(CONFIG_FILE, YAML), (SIGNATURE_FILE, sig.as_bytes())],
            vec![],
        );
        assert!(verify(&config, &[key.public()]).is_ok());
    }

    #[test]
    fn every_failure_has_its_reason() {
        let key = SecretKey::generate();
        let other = SecretKey::generate();
        let sig = key.sign(YAML);
        let trusted = [key.public()];
        let cases = [
            (remote(&[], vec![]), Rejected::Missing),
            (remote(&[(CONFIG_FILE, YAML)], vec![]), Rejected::Unsigned),
            (
                remote(
                    &[(CONFIG_FILE, YAML), (SIGNATURE_FILE, sig.as_bytes())],
                    vec![0; 32],
                ),
                Rejected::WrongHash,
            ),
            (
                remote(&[(CONFIG_FILE, YAML), (SIGNATURE_FILE, b"!!")], vec![]),
                Rejected::BadSignature,
            ),
            (
                remote(
                    &[
                        (CONFIG_FILE, YAML),
                        (SIGNATURE_FILE, other.sign(YAML).as_bytes()),
                    ],
                    vec![],
                ),
                Rejected::Untrusted,
            ),
            // The YAML changed after signing.
            (
                remote(
                    &[
                        (CONFIG_FILE, b"profile: { enabled: false }\n"),
                        (SIGNATURE_FILE, sig.as_bytes()),
                    ],
                    vec![],
                ),
                Rejected::Untrusted,
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(
                verify(&config, &trusted),
                Err(expected.clone()),
                "{expected}"
            );
            assert!(!expected.to_string().contains('\n'));
        }
    }

    #[test]
    fn keys_round_trip_through_base64() {
        let key = SecretKey::generate();
        let public = TrustedKey::parse(&key.public().to_base64()).unwrap();
        assert_eq!(public, key.public());
        let again = SecretKey::parse(&key.to_base64()).unwrap();
        assert_eq!(again.public(), key.public());
        assert!(TrustedKey::parse("AAAA").is_err());
        assert!(TrustedKey::parse("not base64!").is_err());
    }

    /// The recipe in the README (OpenSSL, no selfops tool): a key made with
    /// `openssl genpkey -algorithm ed25519`, its public key as the last 32
    /// bytes of `openssl pkey -pubout -outform DER`, and the signature made
    /// with `openssl dgst -sha256 -binary selfops.yaml | openssl pkeyutl
    /// -sign -inkey k.pem -rawin`. Ed25519 is deterministic, so this key
    /// and YAML always give this signature.
    #[test]
    fn openssl_signatures_verify() {
        let yaml = b"trace:\n  exclude: [{ executable: curl }]\n";
        let public = TrustedKey::parse("/vM1nwlL0ms5cIxYzB4gpAMG7vM2F1Znnu01v840XGU=").unwrap();
        let sig = "3r/pfJe2daX8bvqhf898UqRkfjIvSuyjDuNUZknwg39R0d1OQy0BGsLfH5sl8xClb6OZRLvfZF1MQlo4Rxs0DQ==";
        let config = remote(
            &[(CONFIG_FILE, yaml), (SIGNATURE_FILE, sig.as_bytes())],
            sha256(yaml).to_vec(),
        );
        assert!(verify(&config, std::slice::from_ref(&public)).is_ok());
        // The same secret (the last 32 bytes of the PKCS#8 DER) signs alike.
        let secret = SecretKey::parse("9WuSdEmanwLGV63/zLTaNaD+INo+4oSZPREFBgweUXU=").unwrap();
        assert_eq!(secret.public(), public);
        assert_eq!(secret.sign(yaml), sig);
    }
}
