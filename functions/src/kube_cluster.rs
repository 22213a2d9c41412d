//! The Kubernetes adapter: reads the snapshot a planner needs with one paginated LIST per kind
//! (per namespace and kind when the request names namespaces; never one GET per pod), the
//! LISTs in flight together, and creates Jobs idempotently.
//! Each call names the `rbac` rule that grants it; the rule is in the error when a call fails.

use crate::rbac::{self, Rule};
use crate::settings::{Settings, CONFIGMAP_NAME};
use crate::snapshot::ClusterSnapshot;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Settings(#[from] crate::settings::SettingsError),
}

impl KubeError {
    /// Errors worth retrying: the API server unreachable, overloaded or failing.
    pub fn is_retryable(&self) -> bool {
        match self {
            KubeError::Api { source: kube::Error::Api(status), .. } => {
                status.code >= 500 || status.code == 429 || status.code == 403 || status.code == 401
            }
            KubeError::Api { .. } => true,
            KubeError::Settings(_) => false,
        }
    }
}

/// The error of a call `rule` grants; the rule is named so a Forbidden answer says what to grant.
fn api_err_for(rule: Rule, action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let action = action.into();
    move |source| KubeError::Api { action: format!("{action} (needs RBAC: {rule})"), source }
}

/// Lists every object of a kind in one paginated LIST.
async fn list_all<K>(rule: Rule, api: Api<K>, what: &str, label_selector: Option<&str>) -> Result<Vec<K>, KubeError>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    if let Some(sel) = label_selector {
        params = params.labels(sel);
    }
    loop {
        let page = api.list(&params).await.map_err(api_err_for(rule, format!("listing {what}")))?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

/// The client for the configured cluster (KUBECONFIG, `~/.kube/config` or in-cluster), like
/// `Client::try_default`. For a plain-`http` API server (`kubectl proxy`, the test simulation)
/// with no CA in the kubeconfig, kube would still load and parse every system root certificate
/// (~4 ms of CPU here, a fifth of a one-shot plan-backup) for TLS it never uses: it gets an empty
/// root store instead. An `https` server, or an `https` proxy, is left exactly as kube sets it up.
pub async fn client() -> Result<Client, kube::Error> {
    let mut config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    let plain_http = config.cluster_url.scheme_str() == Some("http");
    let tls_proxy = config.proxy_url.as_ref().is_some_and(|p| p.scheme_str() != Some("http"));
    if plain_http && !tls_proxy && config.root_cert.is_none() {
        config.root_cert = Some(Vec::new());
    }
    Client::try_from(config)
}

/// Reads Coracle's settings from its ConfigMap; defaults when it does not exist.
pub async fn settings(client: &Client, system_namespace: &str) -> Result<Settings, KubeError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), system_namespace);
    let cm = api
        .get_opt(CONFIGMAP_NAME)
        .await
        .map_err(api_err_for(rbac::READ_SETTINGS, format!("reading ConfigMap {CONFIGMAP_NAME}")))?;
    let mut settings = match cm.and_then(|c| c.data) {
        Some(data) => Settings::from_configmap_data(&data)?,
        None => Settings::default(),
    };
    settings.system_namespace = system_namespace.to_string();
    Ok(settings)
}

/// The snapshot for a backup of `namespaces` (empty: every namespace).
pub async fn backup_snapshot(
    client: &Client,
    settings: Settings,
    namespaces: &[String],
    label_selector: Option<&str>,
) -> Result<ClusterSnapshot, KubeError> {
    let mut snap = backup_objects(client, namespaces, label_selector).await?;
    snap.settings = settings;
    Ok(snap)
}

/// Coracle's settings and the snapshot for a backup of `namespaces`, read together.
pub async fn settings_and_backup_snapshot(
    client: &Client,
    system_namespace: &str,
    namespaces: &[String],
    label_selector: Option<&str>,
) -> Result<ClusterSnapshot, KubeError> {
    let (settings, mut snap) =
        futures::try_join!(settings(client, system_namespace), backup_objects(client, namespaces, label_selector))?;
    snap.settings = settings;
    Ok(snap)
}

/// Every LIST a backup plan needs, all in flight at once: a planner run costs about one round
/// trip to the API server, not one per namespace and kind. For every namespace, pods, PVCs and
/// ReplicaSets are listed cluster-wide (one LIST each, the rules are cluster-scoped anyway);
/// for named namespaces, per namespace.
async fn backup_objects(
    client: &Client,
    namespaces: &[String],
    label_selector: Option<&str>,
) -> Result<ClusterSnapshot, KubeError> {
    let every_namespace = namespaces.is_empty() || namespaces.iter().any(|n| n == "*");
    let namespaced = async {
        if every_namespace {
            futures::try_join!(
                list_all(rbac::LIST_PODS, Api::<Pod>::all(client.clone()), "pods", label_selector),
                list_all(
                    rbac::LIST_CLAIMS,
                    Api::<PersistentVolumeClaim>::all(client.clone()),
                    "persistentvolumeclaims",
                    None
                ),
                list_all(rbac::LIST_REPLICA_SETS, Api::<ReplicaSet>::all(client.clone()), "replicasets", None),
            )
        } else {
            let per_namespace = futures::future::try_join_all(namespaces.iter().map(|ns| async move {
                let (pods, claims, sets) = (
                    format!("pods in {ns}"),
                    format!("persistentvolumeclaims in {ns}"),
                    format!("replicasets in {ns}"),
                );
                futures::try_join!(
                    list_all(rbac::LIST_PODS, Api::<Pod>::namespaced(client.clone(), ns), &pods, label_selector),
                    list_all(
                        rbac::LIST_CLAIMS,
                        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
                        &claims,
                        None
                    ),
                    list_all(rbac::LIST_REPLICA_SETS, Api::<ReplicaSet>::namespaced(client.clone(), ns), &sets, None),
                )
            }))
            .await?;
            let (mut pods, mut pvcs, mut rs) = (Vec::new(), Vec::new(), Vec::new());
            for (p, c, r) in per_namespace {
                pods.extend(p);
                pvcs.extend(c);
                rs.extend(r);
            }
            Ok((pods, pvcs, rs))
        }
    };
    let (namespaces, pvs, (pods, pvcs, replica_sets)) = futures::try_join!(
        list_all(rbac::LIST_NAMESPACES, Api::<Namespace>::all(client.clone()), "namespaces", None),
        list_all(
            rbac::LIST_PERSISTENT_VOLUMES,
            Api::<PersistentVolume>::all(client.clone()),
            "persistentvolumes",
            None
        ),
        namespaced,
    )?;
    Ok(ClusterSnapshot { namespaces, pods, pvcs, pvs, replica_sets, settings: Settings::default() })
}

/// Creates a Job; one that exists already (a duplicated request) counts as created.
pub async fn create_job(client: &Client, job: &Job) -> Result<bool, KubeError> {
    let ns = job.metadata.namespace.as_deref().unwrap_or("default");
    let name = job.metadata.name.clone().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    match api.create(&PostParams::default(), job).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(api_err_for(rbac::CREATE_JOBS, format!("creating Job {ns}/{name}"))(e)),
    }
}

/// Creates Jobs concurrently (a backup's Jobs, one per node, cost about one API round trip, not
/// one each); for each, whether it was created rather than found.
pub async fn create_jobs(client: &Client, jobs: &[Job]) -> Result<Vec<bool>, KubeError> {
    futures::future::try_join_all(jobs.iter().map(|job| create_job(client, job))).await
}

/// Reads one pod; None when it is gone.
pub async fn pod(client: &Client, namespace: &str, name: &str) -> Result<Option<Pod>, KubeError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map_err(api_err_for(rbac::GET_PODS, format!("reading pod {namespace}/{name}")))
}

/// The PV a claim is bound to.
pub async fn claim_volume(client: &Client, namespace: &str, claim: &str) -> Result<Option<String>, KubeError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc =
        api.get_opt(claim).await.map_err(api_err_for(rbac::GET_CLAIMS, format!("reading PVC {namespace}/{claim}")))?;
    Ok(pvc.and_then(|p| p.spec).and_then(|s| s.volume_name).filter(|v| !v.is_empty()))
}

/// Sets a label on a namespace (merge patch; creating nothing).
pub async fn label_namespace(client: &Client, namespace: &str, key: &str, value: &str) -> Result<(), KubeError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
    api.patch(namespace, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .map_err(api_err_for(rbac::LABEL_NAMESPACES, format!("labelling namespace {namespace}")))?;
    Ok(())
}

/// Coracle's Jobs and their pods carrying a label (`coracle.dev/backup-uid=<uid>`), one paginated
/// LIST each.
pub async fn jobs_and_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<(Vec<Job>, Vec<Pod>), KubeError> {
    let jobs = list_all(
        rbac::LIST_SYSTEM_JOBS,
        Api::namespaced(client.clone(), namespace),
        &format!("Jobs {selector}"),
        Some(selector),
    )
    .await?;
    let pods = list_all(
        rbac::LIST_SYSTEM_PODS,
        Api::namespaced(client.clone(), namespace),
        &format!("pods {selector}"),
        Some(selector),
    )
    .await?;
    Ok((jobs, pods))
}

/// Every ConfigMap carrying a label (any value) in every namespace, in one paginated LIST.
pub async fn labelled_configmaps(client: &Client, label: &str) -> Result<Vec<ConfigMap>, KubeError> {
    list_all(rbac::LIST_CONFIGMAPS, Api::all(client.clone()), &format!("ConfigMaps labelled {label}"), Some(label))
        .await
}

/// Waits until a Job matching `selector` changes, or `limit` passes: one LIST for the current
/// resourceVersion, then a WATCH from it, so nothing that happened since the LIST is missed.
pub async fn wait_for_job_change(
    client: &Client,
    namespace: &str,
    selector: &str,
    limit: std::time::Duration,
) -> Result<(), KubeError> {
    use futures::StreamExt as _;
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let listed = api
        .list_metadata(&ListParams::default().labels(selector).limit(1))
        .await
        .map_err(api_err_for(rbac::WATCH_SYSTEM_JOBS, format!("listing Jobs {selector}")))?;
    let version = listed.metadata.resource_version.unwrap_or_default();
    let params = kube::api::WatchParams::default().labels(selector).timeout(limit.as_secs().clamp(1, 290) as u32);
    let stream = api
        .watch(&params, &version)
        .await
        .map_err(api_err_for(rbac::WATCH_SYSTEM_JOBS, format!("watching Jobs {selector}")))?;
    let mut stream = std::pin::pin!(stream);
    // Any event (or the watch ending, or an expired version) is a reason to look again.
    let _ = tokio::time::timeout(limit, stream.next()).await;
    Ok(())
}
