//! An in-memory Kubernetes API server over real HTTP, for the `kube` client and `kubectl`.
//!
//! Choices where a real server would differ, made for tests:
//! - Creating an object in a namespace that does not exist is accepted (fixtures need not create
//!   namespaces first). Deleting a namespace deletes everything in it at once.
//! - Deletes are immediate (no grace period, no garbage collection of owned objects; `propagationPolicy` is
//!   accepted and ignored); objects with finalizers get a `deletionTimestamp` and go when an update clears
//!   the finalizers.
//! - Strategic merge patch merges the well-known keyed lists (containers, volumes, env, ... by name) and
//!   replaces other lists; server-side apply is a strategic merge without field ownership.
//! - Status sent at create time is kept (handy for fixtures); after that, types with a status subresource
//!   only change status through `/status` (or [`Store::modify`]).
//! - Fixture objects keep their uids; resourceVersions always come from the store's one counter.
//! - New pods, PVCs and PVs without a `status.phase` start `Pending`, namespaces `Active` (so a fixture pod
//!   that should be backed up must say `status: {phase: Running}`). Secret `stringData` is folded into `data`.
//! - Only the `/status` subresource is served (no `scale`, `log`, `exec`, `eviction`); the OpenAPI documents
//!   hold just enough for kubectl to leave validation to the server.
//! - Mutating admission webhooks are called on creates and updates through the API (see [`admission`] for
//!   what matches kube-apiserver and what is approximated), then validating webhooks, one after another
//!   rather than in parallel; neither kind's configuration gets API-side defaults or validation beyond
//!   the mutating one's.

pub mod admission;
mod api;
mod errors;
mod openapi;
mod patch;
mod requests;
mod resources;
mod selectors;
mod store;
mod table;
mod validation;
mod watch;
mod webhook_client;
mod webhooks;

use std::path::Path;

use anyhow::Context as _;

pub use admission::{AdmissionCall, AdmissionOutcome};
pub use errors::ApiError;
pub use requests::RecordedRequest;
pub use resources::{ResourceType, RESOURCES};
pub use store::Store;

use crate::server_thread::ServerThread;
use admission::Admission;
use requests::RequestLog;

/// The name of the cluster, user and context in the kubeconfig [`SimServer::write_kubeconfig`] writes.
pub const CONTEXT: &str = "coracle-sim";

/// A running simulated API server; it stops when dropped.
pub struct SimServer {
    url: String,
    store: Store,
    log: RequestLog,
    admission: Admission,
    server: ServerThread,
}

impl SimServer {
    /// Starts a server on a free port, loaded with the objects of a multi-document YAML (may be empty).
    pub async fn start(objects_yaml: &str) -> anyhow::Result<Self> {
        Self::start_on(0, objects_yaml)
    }

    /// [`SimServer::start`] for synchronous code.
    pub fn start_blocking(objects_yaml: &str) -> anyhow::Result<Self> {
        Self::start_on(0, objects_yaml)
    }

    /// Starts a server on a given port (0: a free one).
    pub fn start_on(port: u16, objects_yaml: &str) -> anyhow::Result<Self> {
        let store = Store::new();
        store.load_yaml(objects_yaml).context("loading the simulation's objects")?;
        let log = RequestLog::default();
        let admission = Admission::default();
        let (app_store, app_log, app_admission) = (store.clone(), log.clone(), admission.clone());
        let server = ServerThread::spawn("coracle-sim", port, move |shutdown, addr| {
            api::router(api::AppState {
                store: app_store,
                log: app_log,
                admission: app_admission,
                shutdown,
                address: addr.to_string(),
            })
        })?;
        Ok(Self { url: format!("http://{}", server.addr()), store, log, admission, server })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// A `kube::Client` for this server. Call it inside the tokio runtime that will use the client.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let uri = self.url.parse().with_context(|| format!("parsing {}", self.url))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        kube::Client::try_from(config).context("building a kube client for the simulation")
    }

    /// The object store, for fixtures and assertions without HTTP.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log.snapshot()
    }

    pub fn clear_requests(&self) {
        self.log.clear();
    }

    /// Where webhooks whose `clientConfig.service` is `namespace/service:port` are reached, as
    /// `https://127.0.0.1:<port>` (a cluster's Service and DNS stand-in). The server certificate is still
    /// verified against `<service>.<namespace>.svc`, as kube-apiserver does, so it must carry that name.
    pub fn set_service_endpoint(&self, namespace: &str, service: &str, port: u16, url: impl Into<String>) {
        self.admission.set_endpoint(namespace, service, port, url.into());
    }

    /// Every admission webhook call so far, in order.
    pub fn admission_calls(&self) -> Vec<AdmissionCall> {
        self.admission.calls()
    }

    pub fn clear_admission_calls(&self) {
        self.admission.clear();
    }

    /// A kubeconfig for this server: no auth, cluster, user and context named [`CONTEXT`], namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {CONTEXT}\n  cluster:\n    server: {url}\n\
             users:\n- name: {CONTEXT}\n  user: {{}}\ncontexts:\n- name: {CONTEXT}\n  context:\n    cluster: {CONTEXT}\n    \
             user: {CONTEXT}\n    namespace: default\ncurrent-context: {CONTEXT}\n",
            url = self.url
        )
    }

    /// Writes [`SimServer::kubeconfig`] to a file, for `KUBECONFIG=<path>` in subprocesses and kubectl.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.kubeconfig()).with_context(|| format!("writing {}", path.display()))
    }

    /// Stops the server now (dropping it does the same): open watches end, the port is released.
    pub fn shutdown(mut self) {
        self.server.stop();
    }
}
