//! What each Coracle component may do in the Kubernetes API: one rule per kind of call its code
//! makes. The adapters in `kube_cluster` (and `certgen`, `setup`) name the rule each call needs, the
//! rendered Roles and ClusterRoles in `deploy/base` are checked against this table, and the
//! end-to-end test checks every request each ServiceAccount made against it — so the grants can
//! neither drift from the code nor exceed it.

use crate::settings::{CONFIGMAP_NAME, DEFAULT_SYSTEM_NAMESPACE};

/// Where a rule applies: Coracle's own namespace (a Role) or every namespace (a ClusterRole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    System,
    Cluster,
}

/// One RBAC rule: verbs on one resource, optionally restricted to named objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub scope: Scope,
    /// API group; "" is the core group.
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// `resourceNames`; empty: any object. (RBAC cannot restrict `create` or `list` by name.)
    pub names: &'static [&'static str],
}

const fn rule(
    scope: Scope,
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    names: &'static [&'static str],
) -> Rule {
    Rule { scope, group, resource, verbs, names }
}

/// The webhook serving certificate's Secret, written by `coracle certgen`.
pub const WEBHOOK_TLS_SECRET: &str = "coracle-webhook-tls";
/// The MutatingWebhookConfiguration for Pod CREATE (restore-wait injection).
pub const MUTATING_WEBHOOK: &str = "coracle-restore";
/// The ValidatingWebhookConfiguration for Deployment/StatefulSet UPDATE (rollout triggers).
pub const VALIDATING_WEBHOOK: &str = "coracle-workloads";
/// The installation master key's Secret (Settings::master_key_secret's default).
pub const MASTER_KEY_SECRET: &str = "coracle-master-key";

// The calls, one constant per adapter function (or group of calls made together).

/// `kube_cluster::settings`: Coracle's ConfigMap.
pub const READ_SETTINGS: Rule = rule(Scope::System, "", "configmaps", &["get"], &[CONFIGMAP_NAME]);
/// `kube_cluster::backup_snapshot`: namespaces, PVs, and pods, PVCs and ReplicaSets of any namespace.
pub const LIST_NAMESPACES: Rule = rule(Scope::Cluster, "", "namespaces", &["list"], &[]);
pub const LIST_PERSISTENT_VOLUMES: Rule = rule(Scope::Cluster, "", "persistentvolumes", &["list"], &[]);
pub const LIST_PODS: Rule = rule(Scope::Cluster, "", "pods", &["list"], &[]);
pub const LIST_CLAIMS: Rule = rule(Scope::Cluster, "", "persistentvolumeclaims", &["list"], &[]);
pub const LIST_REPLICA_SETS: Rule = rule(Scope::Cluster, "apps", "replicasets", &["list"], &[]);
/// `kube_cluster::create_job`: backup and restore Jobs, in Coracle's namespace only.
pub const CREATE_JOBS: Rule = rule(Scope::System, "batch", "jobs", &["create"], &[]);
/// `kube_cluster::pod`.
pub const GET_PODS: Rule = rule(Scope::Cluster, "", "pods", &["get"], &[]);
/// `kube_cluster::claim_volume`.
pub const GET_CLAIMS: Rule = rule(Scope::Cluster, "", "persistentvolumeclaims", &["get"], &[]);
/// `kube_cluster::label_namespace`: the restore label the webhook's namespaceSelector matches.
pub const LABEL_NAMESPACES: Rule = rule(Scope::Cluster, "", "namespaces", &["patch"], &[]);
/// `kube_cluster::jobs_and_pods`: Coracle's Jobs and their pods.
pub const LIST_SYSTEM_JOBS: Rule = rule(Scope::System, "batch", "jobs", &["list"], &[]);
pub const LIST_SYSTEM_PODS: Rule = rule(Scope::System, "", "pods", &["list"], &[]);
/// `kube_cluster::wait_for_job_change`: a LIST for the resourceVersion, then a WATCH.
pub const WATCH_SYSTEM_JOBS: Rule = rule(Scope::System, "batch", "jobs", &["list", "watch"], &[]);
/// `kube_cluster::labelled_configmaps`: schedules and trigger policies, in any namespace.
pub const LIST_CONFIGMAPS: Rule = rule(Scope::Cluster, "", "configmaps", &["list"], &[]);
/// on-k8s-event reads the object an event names.
pub const GET_DEPLOYMENTS: Rule = rule(Scope::Cluster, "apps", "deployments", &["get"], &[]);
pub const GET_STATEFUL_SETS: Rule = rule(Scope::Cluster, "apps", "statefulsets", &["get"], &[]);
/// `certgen`: the serving certificate's Secret and the webhooks' caBundle.
pub const CREATE_SECRETS: Rule = rule(Scope::System, "", "secrets", &["create"], &[]);
pub const UPDATE_WEBHOOK_TLS: Rule = rule(Scope::System, "", "secrets", &["get", "update"], &[WEBHOOK_TLS_SECRET]);
pub const PATCH_WEBHOOKS: Rule = rule(
    Scope::Cluster,
    "admissionregistration.k8s.io",
    "mutatingwebhookconfigurations",
    &["get", "patch"],
    &[MUTATING_WEBHOOK],
);
pub const PATCH_VALIDATING_WEBHOOKS: Rule = rule(
    Scope::Cluster,
    "admissionregistration.k8s.io",
    "validatingwebhookconfigurations",
    &["get", "patch"],
    &[VALIDATING_WEBHOOK],
);
/// `setup master-key`: reads the master key's Secret, creates it when absent.
pub const READ_MASTER_KEY: Rule = rule(Scope::System, "", "secrets", &["get"], &[MASTER_KEY_SECRET]);

/// One component: a ServiceAccount and the rules its code needs.
#[derive(Debug, Clone, Copy)]
pub struct Component {
    /// What runs under it (`plan-backup`, `serve`, `certgen`, ...).
    pub name: &'static str,
    pub service_account: &'static str,
    pub rules: &'static [Rule],
}

/// Every component, with exactly the calls its code makes.
pub static COMPONENTS: &[Component] = &[
    Component {
        name: "plan-backup",
        service_account: "coracle-plan-backup",
        rules: &[
            READ_SETTINGS,
            LIST_NAMESPACES,
            LIST_PERSISTENT_VOLUMES,
            LIST_PODS,
            LIST_CLAIMS,
            LIST_REPLICA_SETS,
            CREATE_JOBS,
        ],
    },
    // record-result only reads and writes NATS.
    Component { name: "record-result", service_account: "coracle-record-result", rules: &[] },
    Component {
        name: "plan-restore",
        service_account: "coracle-plan-restore",
        rules: &[READ_SETTINGS, LABEL_NAMESPACES],
    },
    Component {
        name: "start-restore",
        service_account: "coracle-start-restore",
        rules: &[READ_SETTINGS, GET_PODS, GET_CLAIMS, CREATE_JOBS],
    },
    Component { name: "schedule-tick", service_account: "coracle-schedule-tick", rules: &[LIST_CONFIGMAPS] },
    Component {
        name: "on-k8s-event",
        service_account: "coracle-on-k8s-event",
        rules: &[LIST_CONFIGMAPS, GET_PODS, GET_DEPLOYMENTS, GET_STATEFUL_SETS],
    },
    Component { name: "sweep", service_account: "coracle-sweep", rules: &[LIST_SYSTEM_JOBS, LIST_SYSTEM_PODS] },
    Component { name: "serve", service_account: "coracle-serve", rules: &[READ_SETTINGS] },
    Component {
        name: "certgen",
        service_account: "coracle-certgen",
        rules: &[CREATE_SECRETS, UPDATE_WEBHOOK_TLS, PATCH_WEBHOOKS, PATCH_VALIDATING_WEBHOOKS],
    },
    Component { name: "setup", service_account: "coracle-setup", rules: &[CREATE_SECRETS, READ_MASTER_KEY] },
    // Retention: expires backups, launches repository maintenance Jobs, records their results.
    Component {
        name: "maintenance",
        service_account: "coracle-maintenance",
        rules: &[READ_SETTINGS, LIST_SYSTEM_JOBS, LIST_SYSTEM_PODS, CREATE_JOBS],
    },
    // The every-minute CronJob publishing `coracle.schedule.tick` (NATS only).
    Component { name: "tick", service_account: "coracle-tick", rules: &[] },
    // `coracle backup run` in a one-shot Job: plans like plan-backup, then waits for its Jobs and
    // reads their results (termination messages) as the sweep does.
    Component {
        name: "backup-run",
        service_account: "coracle-backup-run",
        rules: &[
            READ_SETTINGS,
            LIST_NAMESPACES,
            LIST_PERSISTENT_VOLUMES,
            LIST_PODS,
            LIST_CLAIMS,
            LIST_REPLICA_SETS,
            CREATE_JOBS,
            WATCH_SYSTEM_JOBS,
            LIST_SYSTEM_PODS,
        ],
    },
    // The backup and restore Jobs: no API access at all (their pods mount no token either).
    Component { name: "volume-job", service_account: "coracle-volume-job", rules: &[] },
];

/// The component running under a ServiceAccount of Coracle's namespace.
pub fn component(service_account: &str) -> Option<&'static Component> {
    COMPONENTS.iter().find(|c| c.service_account == service_account)
}

/// The Role (`Scope::System`) or ClusterRole (`Scope::Cluster`) name of a component.
pub fn role_name(component: &Component) -> String {
    format!("coracle-{}", component.name)
}

/// The namespace Roles are written for in `deploy/base`.
pub const BASE_NAMESPACE: &str = DEFAULT_SYSTEM_NAMESPACE;

/// One request, as an authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    /// None for cluster-scoped objects.
    pub namespace: Option<&'a str>,
    /// None for collections (list, create).
    pub name: Option<&'a str>,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { String::new() } else { format!(".{}", self.group) };
        write!(f, "{} {}{}", self.verbs.join(","), self.resource, group)?;
        if !self.names.is_empty() {
            write!(f, " named {}", self.names.join(","))?;
        }
        match self.scope {
            Scope::System => write!(f, " in Coracle's namespace"),
            Scope::Cluster => write!(f, " in every namespace"),
        }
    }
}

impl Rule {
    /// Whether this rule grants `access` to a component installed in `system_namespace`.
    pub fn allows(&self, access: &Access<'_>, system_namespace: &str) -> bool {
        let scoped = match self.scope {
            Scope::Cluster => true,
            Scope::System => access.namespace == Some(system_namespace),
        };
        let named = self.names.is_empty() || access.name.is_some_and(|n| self.names.contains(&n));
        scoped
            && named
            && self.group == access.group
            && self.resource == access.resource
            && self.verbs.contains(&access.verb)
    }
}

impl Component {
    pub fn allows(&self, access: &Access<'_>, system_namespace: &str) -> bool {
        self.rules.iter().any(|r| r.allows(access, system_namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_restrict_and_scopes_confine() {
        let get =
            |ns, name| Access { verb: "get", group: "", resource: "configmaps", namespace: Some(ns), name: Some(name) };
        let serve = component("coracle-serve").expect("serve");
        assert!(serve.allows(&get("coracle-system", CONFIGMAP_NAME), "coracle-system"));
        assert!(!serve.allows(&get("coracle-system", "other"), "coracle-system"));
        assert!(!serve.allows(&get("shop", CONFIGMAP_NAME), "coracle-system"));
        let jobs = component("coracle-volume-job").expect("jobs");
        assert!(!jobs.allows(&get("coracle-system", CONFIGMAP_NAME), "coracle-system"));
    }

    #[test]
    fn every_service_account_is_distinct() {
        let mut names: Vec<_> = COMPONENTS.iter().map(|c| c.service_account).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COMPONENTS.len());
    }
}
