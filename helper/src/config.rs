//! The helper's settings, all from the environment the admission function writes into the
//! injected init container (the pod fields through the downward API). Every problem is
//! collected, so one bad pod spec shows all of them at once.

use crate::duration::parse_duration;
use crate::names;
use coracle_events::RestoreRef;
use std::path::PathBuf;
use std::time::Duration;

pub const RESTORE_NAME: &str = "CORACLE_RESTORE_NAME";
pub const RESTORE_UID: &str = "CORACLE_RESTORE_UID";
pub const POD_NAME: &str = "CORACLE_POD_NAME";
pub const POD_NAMESPACE: &str = "CORACLE_POD_NAMESPACE";
pub const POD_UID: &str = "CORACLE_POD_UID";
pub const NODE_NAME: &str = "CORACLE_NODE_NAME";
pub const VOLUMES: &str = "CORACLE_VOLUMES";
pub const KEEP_MARKERS: &str = "CORACLE_KEEP_MARKERS";
pub const RESTORES_ROOT: &str = "CORACLE_RESTORES_ROOT";
pub const TIMEOUT: &str = "CORACLE_TIMEOUT";
pub const NATS_URL: &str = "CORACLE_NATS_URL";
pub const TERMINATION_LOG: &str = "CORACLE_TERMINATION_LOG";

pub const DEFAULT_RESTORES_ROOT: &str = "/restores";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

/// The pod this helper runs in, for the ready event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub restore: RestoreRef,
    /// `None` when the downward API fields are missing: the helper still waits, but cannot
    /// announce itself.
    pub pod: Option<PodIdentity>,
    /// Pod volume names, each mounted at `<root>/<volume>`; validated, without duplicates.
    pub volumes: Vec<String>,
    /// Volumes whose markers another pod's restore wrote and other pods wait for too: waited
    /// for like the rest, but left in place.
    pub keep_markers: Vec<String>,
    pub root: PathBuf,
    pub timeout: Duration,
    pub nats_url: Option<String>,
    pub termination_log: PathBuf,
    /// Things worth a warning that do not stop the helper.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads the settings through `get` (the process environment in `main`, a map in tests).
    /// Unset and empty variables are the same.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        let uid = var(RESTORE_UID).unwrap_or_default();
        if uid.is_empty() {
            errors.push(format!("{RESTORE_UID} is not set"));
        } else if let Err(e) = names::validate_restore_uid(&uid) {
            errors.push(format!("{RESTORE_UID}: {e}"));
        }
        let restore = RestoreRef { name: var(RESTORE_NAME).unwrap_or_default(), uid };
        if restore.name.is_empty() {
            warnings.push(format!("{RESTORE_NAME} is not set"));
        }

        let mut volumes: Vec<String> = Vec::new();
        match var(VOLUMES) {
            None => errors.push(format!("{VOLUMES} is not set (comma-separated pod volume names)")),
            Some(list) => {
                for volume in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    if let Err(e) = names::validate_name(&format!("{VOLUMES} entry"), volume, names::NameKind::Label) {
                        errors.push(e.to_string());
                    } else if volumes.iter().any(|v| v == volume) {
                        warnings.push(format!("{VOLUMES} lists {volume} twice"));
                    } else {
                        volumes.push(volume.to_string());
                    }
                }
                if volumes.is_empty() && errors.is_empty() {
                    errors.push(format!("{VOLUMES} names no volume"));
                }
            }
        }

        let mut keep_markers = Vec::new();
        for volume in var(KEEP_MARKERS).unwrap_or_default().split(',').map(str::trim).filter(|v| !v.is_empty()) {
            if let Err(e) = names::validate_name(&format!("{KEEP_MARKERS} entry"), volume, names::NameKind::Label) {
                errors.push(e.to_string());
            } else if !volumes.iter().any(|v| v == volume) {
                warnings.push(format!("{KEEP_MARKERS} names {volume}, which {VOLUMES} does not list"));
            } else if !keep_markers.iter().any(|v| v == volume) {
                keep_markers.push(volume.to_string());
            }
        }

        let root = PathBuf::from(var(RESTORES_ROOT).unwrap_or_else(|| DEFAULT_RESTORES_ROOT.into()));
        let timeout = match var(TIMEOUT) {
            None => DEFAULT_TIMEOUT,
            Some(text) => match parse_duration(&text) {
                Ok(d) if d.is_zero() => {
                    errors.push(format!("{TIMEOUT} must be longer than 0"));
                    DEFAULT_TIMEOUT
                }
                Ok(d) => d,
                Err(e) => {
                    errors.push(format!("{TIMEOUT}: {e}"));
                    DEFAULT_TIMEOUT
                }
            },
        };

        let pod = pod_identity(&var, &mut errors, &mut warnings);
        let nats_url = var(NATS_URL);
        if nats_url.is_some() && pod.is_none() {
            warnings.push(format!(
                "{NATS_URL} is set but the pod fields are incomplete: the ready event cannot be published"
            ));
        }

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            restore,
            pod,
            volumes,
            keep_markers,
            root,
            timeout,
            nats_url,
            termination_log: PathBuf::from(var(TERMINATION_LOG).unwrap_or_else(|| DEFAULT_TERMINATION_LOG.into())),
            warnings,
        })
    }

    /// The marker file name this restore's Jobs write into each volume's `.coracle`.
    pub fn marker_name(&self) -> &str {
        &self.restore.uid
    }
}

/// The downward API fields: each is validated when present; all four are needed for the event.
fn pod_identity(
    var: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<PodIdentity> {
    let mut check = |name: &str, validate: fn(&str, &str) -> Result<(), names::NameError>| {
        let value = var(name)?;
        match validate(name, &value) {
            Ok(()) => Some(value),
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        }
    };
    let namespace = check(POD_NAMESPACE, |w, v| names::validate_name(w, v, names::NameKind::Label));
    let name = check(POD_NAME, |w, v| names::validate_name(w, v, names::NameKind::Subdomain));
    let uid = check(POD_UID, names::validate_uuid);
    let node = check(NODE_NAME, |w, v| names::validate_name(w, v, names::NameKind::Subdomain));
    let missing: Vec<&str> = [(POD_NAMESPACE, &namespace), (POD_NAME, &name), (POD_UID, &uid), (NODE_NAME, &node)]
        .into_iter()
        .filter(|(n, v)| v.is_none() && var(n).is_none())
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        warnings.push(format!("not set: {}", missing.join(", ")));
    }
    Some(PodIdentity { namespace: namespace?, name: name?, uid: uid?, node: node? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const POD: &str = "0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a";

    fn env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    fn full() -> Vec<(&'static str, &'static str)> {
        vec![
            (RESTORE_NAME, "r1"),
            (RESTORE_UID, "5b2e7c1a-0000-4000-8000-000000000001"),
            (POD_NAME, "web-7d9f-abcde"),
            (POD_NAMESPACE, "shop"),
            (POD_UID, POD),
            (NODE_NAME, "node-1"),
            (VOLUMES, "data, cache,,data"),
        ]
    }

    #[test]
    fn defaults_and_lists() {
        let c = env(&full()).unwrap();
        assert_eq!(c.volumes, ["data", "cache"]);
        assert_eq!(c.root, PathBuf::from("/restores"));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.termination_log, PathBuf::from("/dev/termination-log"));
        assert_eq!(c.nats_url, None);
        assert_eq!(c.pod.as_ref().map(|p| p.uid.as_str()), Some(POD));
        assert!(c.warnings.iter().any(|w| w.contains("twice")), "{:?}", c.warnings);
    }

    #[test]
    fn markers_to_keep() {
        let mut pairs = full();
        pairs.push((KEEP_MARKERS, "cache, other,cache"));
        let c = env(&pairs).unwrap();
        assert_eq!(c.keep_markers, ["cache"]);
        assert!(c.warnings.iter().any(|w| w.contains("names other")), "{:?}", c.warnings);
        let mut pairs = full();
        pairs.push((KEEP_MARKERS, "../x"));
        assert!(env(&pairs).unwrap_err().to_string().contains(KEEP_MARKERS));
    }

    #[test]
    fn explicit_values() {
        let mut pairs = full();
        pairs.extend([(TIMEOUT, "300ms"), (RESTORES_ROOT, "/x"), (NATS_URL, "nats://n:4222"), (TERMINATION_LOG, "")]);
        let c = env(&pairs).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(300));
        assert_eq!(c.root, PathBuf::from("/x"));
        assert_eq!(c.nats_url.as_deref(), Some("nats://n:4222"));
        assert_eq!(c.termination_log, PathBuf::from(DEFAULT_TERMINATION_LOG));
    }

    #[test]
    fn every_problem_is_reported() {
        let e = env(&[(RESTORE_UID, "../x"), (VOLUMES, "ok,Bad,a/b"), (TIMEOUT, "soon"), (POD_UID, "nope")])
            .unwrap_err()
            .to_string();
        for part in [RESTORE_UID, "\"Bad\"", "\"a/b\"", TIMEOUT, POD_UID] {
            assert!(e.contains(part), "{part} missing from {e}");
        }
        let e = env(&[]).unwrap_err().to_string();
        assert!(e.contains(RESTORE_UID) && e.contains(VOLUMES), "{e}");
        assert!(env(&[(RESTORE_UID, "u"), (VOLUMES, " , ")]).unwrap_err().to_string().contains("no volume"));
        assert!(env(&[(RESTORE_UID, "u"), (VOLUMES, "a"), (TIMEOUT, "0s")]).is_err());
    }

    #[test]
    fn pod_fields_are_optional_but_validated() {
        let c = env(&[(RESTORE_UID, "u"), (VOLUMES, "a"), (NATS_URL, "nats://x")]).unwrap();
        assert_eq!(c.pod, None);
        assert!(c.warnings.iter().any(|w| w.contains("cannot be published")), "{:?}", c.warnings);
        assert!(env(&[(RESTORE_UID, "u"), (VOLUMES, "a"), (POD_NAMESPACE, "Shop")]).is_err());
    }
}
