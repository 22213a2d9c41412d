//! `coracle setup master-key`: the installation master key, generated in the cluster at install
//! time so no default key ships in any manifest. It creates the Secret only when it is absent:
//! the key must never change once repositories exist (every namespace password derives from it).

use crate::rbac::{self, Rule};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::BTreeMap;

/// Random bytes in a generated key (hex-encoded into the Secret's `key`).
pub const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("{action} (needs RBAC: {rule}): {source}")]
    Api {
        action: String,
        rule: Rule,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {0} exists without a non-empty `key`; fill it in (or restore it from your backup of the key)")]
    Incomplete(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// A fresh key: `KEY_BYTES` from the kernel's CSPRNG, hex-encoded.
pub fn generate() -> Result<String, MasterKeyError> {
    use std::io::Read as _;
    let mut buf = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| MasterKeyError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// Whether the Secret was created (true) or already held a key (false).
pub async fn ensure(client: &kube::Client, namespace: &str, name: &str) -> Result<bool, MasterKeyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |rule: Rule, action: String| move |source| MasterKeyError::Api { action, rule, source: Box::new(source) };
    if let Some(existing) =
        api.get_opt(name).await.map_err(err(rbac::READ_MASTER_KEY, format!("reading Secret {namespace}/{name}")))?
    {
        let has_key = existing.data.as_ref().and_then(|d| d.get("key")).is_some_and(|k| !k.0.is_empty());
        return if has_key { Ok(false) } else { Err(MasterKeyError::Incomplete(format!("{namespace}/{name}"))) };
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "coracle-setup".to_string())])),
            annotations: Some(BTreeMap::from([(
                "coracle.dev/note".to_string(),
                "Every repository password derives from this key. Keep a copy outside the cluster; never change it."
                    .to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([("key".to_string(), ByteString(generate()?.into_bytes()))])),
        // The key must not change once written.
        immutable: Some(true),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        // Another run won the race: its key stands.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(err(rbac::CREATE_SECRETS, format!("creating Secret {namespace}/{name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_hex_and_differ() {
        let a = generate().expect("key");
        let b = generate().expect("key");
        assert_eq!(a.len(), KEY_BYTES * 2);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
