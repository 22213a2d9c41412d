//! Repository passwords (SPEC §5): one per namespace, derived from the installation master key
//! with HKDF-SHA256, so disaster recovery needs only the master key and a leaked namespace
//! password opens only that namespace.
//!
//! The derivation is part of the on-disk contract: changing it locks users out of their
//! repositories, which is why a fixed test vector pins it.

use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;

/// HKDF salt; versioned so a future scheme can coexist with this one.
pub const PASSWORD_SALT: &[u8] = b"coracle.dev/repository-password/v1";

/// Derives a namespace's restic password: hex of 32 HKDF-SHA256 bytes with info `<namespace>`
/// for generation 1 and `<namespace>#g<generation>` for later generations (key rotation).
/// Generation 0 is treated as 1.
pub fn namespace_password(master_key: &[u8], namespace: &str, generation: u32) -> String {
    let info = if generation <= 1 { namespace.to_string() } else { format!("{namespace}#g{generation}") };
    let hk = Hkdf::<Sha256>::new(Some(PASSWORD_SALT), master_key);
    let mut okm = [0u8; 32];
    // HKDF-SHA256 can expand up to 255*32 bytes; 32 is a constant far below that.
    hk.expand(info.as_bytes(), &mut okm).expect("32 bytes is a valid HKDF-SHA256 output length");
    hex::encode(okm)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the master key is not set (CORACLE_MASTER_KEY or --master-key-file)")]
    Missing,
    #[error("the master key is empty")]
    Empty,
    #[error("cannot read the master key file {path}: {reason}")]
    File { path: String, reason: String },
}

/// The installation master key. Its bytes are used as HKDF input as they are (after trimming
/// surrounding whitespace, which secrets created from files tend to carry). Never printed.
#[derive(Clone)]
pub struct MasterKey(Vec<u8>);

impl MasterKey {
    pub fn new(raw: &[u8]) -> Result<Self, KeyError> {
        let trimmed = raw.trim_ascii();
        if trimmed.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(MasterKey(trimmed.to_vec()))
    }

    /// Reads the key from a file (a mounted Secret), the alternative to the environment.
    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let raw = std::fs::read(path)
            .map_err(|e| KeyError::File { path: path.display().to_string(), reason: e.kind().to_string() })?;
        Self::new(&raw)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Short keys are accepted (HKDF takes any length) but deserve a warning.
    pub fn is_weak(&self) -> bool {
        self.0.len() < 16
    }

    /// This namespace's repository password.
    pub fn namespace_password(&self, namespace: &str, generation: u32) -> RepositoryPassword {
        RepositoryPassword(namespace_password(&self.0, namespace, generation))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// A repository password; handed to restic only through its environment, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct RepositoryPassword(String);

impl RepositoryPassword {
    /// Wraps a password obtained elsewhere (e.g. a restore of a foreign repository).
    pub fn new(password: String) -> Self {
        RepositoryPassword(password)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RepositoryPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RepositoryPassword(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test-master-key-0123456789";

    #[test]
    fn pinned_test_vector() {
        // Computed independently (Python hmac/hashlib RFC 5869); guards the on-disk contract.
        assert_eq!(
            namespace_password(KEY, "shop", 1),
            "c6488ea3c08e45bdbeff4060faad70e160b3eb87539e1e9261eaa05251f4bbad"
        );
        assert_eq!(
            namespace_password(KEY, "shop", 2),
            "693374505e6f250dcc639d327e41e064680895f8edee9caceaea50605fe8929d"
        );
    }

    #[test]
    fn deterministic_and_separated() {
        let a = namespace_password(KEY, "shop", 1);
        assert_eq!(a, namespace_password(KEY, "shop", 1));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, namespace_password(KEY, "shop2", 1));
        assert_ne!(a, namespace_password(KEY, "shop", 2));
        assert_ne!(namespace_password(KEY, "shop", 2), namespace_password(KEY, "shop", 3));
        assert_ne!(a, namespace_password(b"another-master-key-xxxxxxxx", "shop", 1));
        assert_eq!(namespace_password(KEY, "shop", 0), a);
    }

    #[test]
    fn secrets_do_not_print() {
        let key = MasterKey::new(KEY).unwrap();
        let password = key.namespace_password("shop", 1);
        let shown = format!("{key:?} {password:?}");
        assert!(!shown.contains("test-master-key"), "{shown}");
        assert!(!shown.contains(password.expose()), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn master_key_is_trimmed_and_must_not_be_empty() {
        let padded = MasterKey::new(b"  test-master-key-0123456789\n").unwrap();
        assert_eq!(padded.expose(), KEY);
        assert_eq!(MasterKey::new(b" \n").unwrap_err(), KeyError::Empty);
        assert!(MasterKey::new(b"short").unwrap().is_weak());
        assert!(!padded.is_weak());
    }

    #[test]
    fn master_key_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"test-master-key-0123456789\n").unwrap();
        assert_eq!(MasterKey::from_file(&path).unwrap().expose(), KEY);
        let e = MasterKey::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, KeyError::File { .. }), "{e}");
    }
}
