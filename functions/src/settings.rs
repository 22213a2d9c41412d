//! Installation settings: the `coracle-config` ConfigMap in Coracle's own namespace.
//! Every field has a default so a cluster dump without the ConfigMap still plans.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const CONFIGMAP_NAME: &str = "coracle-config";
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "coracle-system";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// Namespace where Jobs, the ConfigMap and the master-key Secret live.
    pub system_namespace: String,
    /// Each namespace's repository is `<repositoryPrefix>/<namespace>` (any restic backend).
    pub repository_prefix: String,
    /// The kubelet root on the nodes (`/var/lib/kubelet`, RancherOS, TKGI, OpenShift roots…).
    pub kubelet_root: String,
    /// Job indexes running at once on one node.
    pub per_node_concurrency: i32,
    pub backoff_limit_per_index: i32,
    pub ttl_seconds_after_finished: i32,
    /// Per-volume deadline when the request names none (Go duration).
    pub default_volume_timeout: String,
    /// Backup TTL when the request names none (Go duration).
    pub default_ttl: String,
    pub job_image: String,
    pub image_pull_policy: String,
    /// NATS URL handed to Jobs so they publish progress and results; empty: results only via
    /// termination messages.
    pub nats_url: String,
    /// Secret (in the system namespace) holding the installation master key under `key`.
    pub master_key_secret: String,
    /// Optional Secret whose keys become restic's environment (S3/Azure/GCS credentials).
    pub repository_credentials_secret: String,
    pub service_account: String,
    pub job_cpu_request: String,
    pub job_memory_request: String,
    pub job_cpu_limit: String,
    pub job_memory_limit: String,
    /// The restore-wait init container the admission function injects.
    pub helper_image: String,
    pub helper_cpu: String,
    pub helper_memory: String,
    /// How long a restoring pod waits for its data before failing (Go duration).
    pub helper_timeout: String,
    /// How often each namespace's repository is pruned (Go duration; `0s` turns pruning off).
    pub prune_interval: String,
    /// How often each namespace's repository is checked (Go duration; `0s` turns checks off).
    pub check_interval: String,
    /// `restic check --read-data-subset` for the periodic check (`5%`, `1/10`, `500M`; empty: none).
    pub check_read_data_subset: String,
    /// Repository password generation per namespace after key rotation, `shop=2,media=3`
    /// (maintained by `coracle keys rotate`); unlisted namespaces are at generation 1.
    pub key_generations: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            system_namespace: DEFAULT_SYSTEM_NAMESPACE.into(),
            repository_prefix: "/var/lib/coracle/repositories".into(),
            kubelet_root: "/var/lib/kubelet".into(),
            per_node_concurrency: 2,
            backoff_limit_per_index: 2,
            ttl_seconds_after_finished: 86_400,
            default_volume_timeout: "4h".into(),
            default_ttl: "720h".into(),
            job_image: "ghcr.io/coracle-dev/coracle-volume-job:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            nats_url: String::new(),
            master_key_secret: "coracle-master-key".into(),
            repository_credentials_secret: "coracle-repository-credentials".into(),
            service_account: "coracle-volume-job".into(),
            job_cpu_request: "100m".into(),
            job_memory_request: "128Mi".into(),
            job_cpu_limit: "2".into(),
            job_memory_limit: "2Gi".into(),
            helper_image: "ghcr.io/coracle-dev/coracle-restore-wait:0.1.0".into(),
            helper_cpu: "100m".into(),
            helper_memory: "128Mi".into(),
            helper_timeout: "4h".into(),
            prune_interval: "168h".into(),
            check_interval: "720h".into(),
            check_read_data_subset: "5%".into(),
            key_generations: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ConfigMap {CONFIGMAP_NAME}: key {key}: {reason}")]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
}

impl Settings {
    /// Reads the ConfigMap's `data`; unknown keys are ignored, missing keys keep their default.
    pub fn from_configmap_data(data: &BTreeMap<String, String>) -> Result<Self, SettingsError> {
        let mut s = Settings::default();
        for (key, value) in data {
            let int = |v: &str| {
                v.trim().parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| SettingsError {
                    key: key.clone(),
                    reason: format!("{v:?} is not a non-negative integer"),
                })
            };
            match key.as_str() {
                "systemNamespace" => s.system_namespace = value.clone(),
                "repositoryPrefix" => s.repository_prefix = value.trim_end_matches('/').to_string(),
                "kubeletRoot" => s.kubelet_root = value.trim_end_matches('/').to_string(),
                "perNodeConcurrency" => s.per_node_concurrency = int(value)?.max(1),
                "backoffLimitPerIndex" => s.backoff_limit_per_index = int(value)?,
                "ttlSecondsAfterFinished" => s.ttl_seconds_after_finished = int(value)?,
                "defaultVolumeTimeout" => s.default_volume_timeout = value.clone(),
                "defaultTtl" => s.default_ttl = value.clone(),
                "jobImage" => s.job_image = value.clone(),
                "imagePullPolicy" => s.image_pull_policy = value.clone(),
                "natsUrl" => s.nats_url = value.clone(),
                "masterKeySecret" => s.master_key_secret = value.clone(),
                "repositoryCredentialsSecret" => s.repository_credentials_secret = value.clone(),
                "serviceAccount" => s.service_account = value.clone(),
                "jobCpuRequest" => s.job_cpu_request = value.clone(),
                "jobMemoryRequest" => s.job_memory_request = value.clone(),
                "jobCpuLimit" => s.job_cpu_limit = value.clone(),
                "jobMemoryLimit" => s.job_memory_limit = value.clone(),
                "helperImage" => s.helper_image = value.clone(),
                "helperCpu" => s.helper_cpu = value.clone(),
                "helperMemory" => s.helper_memory = value.clone(),
                "helperTimeout" => s.helper_timeout = value.clone(),
                "pruneInterval" => s.prune_interval = value.clone(),
                "checkInterval" => s.check_interval = value.clone(),
                "checkReadDataSubset" => s.check_read_data_subset = value.trim().to_string(),
                "keyGenerations" => s.key_generations = value.clone(),
                _ => {}
            }
        }
        if !s.kubelet_root.starts_with('/') {
            return Err(SettingsError { key: "kubeletRoot".into(), reason: "must be an absolute path".into() });
        }
        Ok(s)
    }

    /// The repository password generation of a namespace (1 unless rotated).
    pub fn key_generation(&self, namespace: &str) -> u32 {
        self.key_generations
            .split(',')
            .filter_map(|e| e.split_once('='))
            .find(|(ns, _)| ns.trim() == namespace)
            .and_then(|(_, g)| g.trim().parse().ok())
            .unwrap_or(1)
    }

    /// `<kubeletRoot>/pods`, the host directory the Jobs mount.
    pub fn pods_root(&self) -> String {
        format!("{}/pods", self.kubelet_root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_overrides_defaults_and_rejects_bad_values() {
        let data: BTreeMap<String, String> =
            [("kubeletRoot", "/opt/rke/var/lib/kubelet/"), ("perNodeConcurrency", "4")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let s = Settings::from_configmap_data(&data).expect("valid");
        assert_eq!(s.pods_root(), "/opt/rke/var/lib/kubelet/pods");
        assert_eq!(s.per_node_concurrency, 4);
        assert_eq!(s.backoff_limit_per_index, 2);
        assert_eq!((s.prune_interval.as_str(), s.check_interval.as_str()), ("168h", "720h"));
        let rotated = Settings { key_generations: "shop=3,media=2".into(), ..Settings::default() };
        assert_eq!((rotated.key_generation("shop"), rotated.key_generation("media")), (3, 2));
        assert_eq!(rotated.key_generation("other"), 1);
        let bad: BTreeMap<String, String> = [("perNodeConcurrency".to_string(), "lots".to_string())].into();
        let err = Settings::from_configmap_data(&bad).expect_err("invalid");
        assert!(err.to_string().contains("perNodeConcurrency"), "{err}");
    }
}
