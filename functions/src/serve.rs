//! `coracle serve`: the HTTPS server for the admission endpoints. TLS only (rustls); the
//! certificate and key are read from files and reloaded when they change, so a rotated
//! Secret takes effect without a restart.

use crate::admission::HelperSettings;
use crate::handlers::admit::{self, PendingStore};
use crate::triggers;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use coracle_events::publish::Publisher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS certificate {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("listening on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_key_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, ServeError> {
    let err = |path: &Path, reason: String| ServeError::Tls { path: path.to_path_buf(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(cert, "holds no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| err(key, e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Serves the current certificate, re-reading the files at most once a second when their
/// modification times change. A broken new file keeps the previous certificate in service.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
    checked: Mutex<Instant>,
}

impl ReloadingCert {
    pub fn new(cert: &Path, key: &Path) -> Result<Self, ServeError> {
        let loaded = load_key_pair(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new((modified(cert), modified(key), loaded)),
            checked: Mutex::new(Instant::now()),
        })
    }

    fn refresh(&self) {
        let due = self.checked.lock().map(|mut t| {
            let due = t.elapsed() >= Duration::from_secs(1);
            if due {
                *t = Instant::now();
            }
            due
        });
        if !due.unwrap_or(false) {
            return;
        }
        let (cert_m, key_m) = (modified(&self.cert), modified(&self.key));
        let changed = self.current.read().map(|c| c.0 != cert_m || c.1 != key_m).unwrap_or(false);
        if !changed {
            return;
        }
        match load_key_pair(&self.cert, &self.key) {
            Ok(loaded) => {
                if let Ok(mut c) = self.current.write() {
                    *c = (cert_m, key_m, loaded);
                    tracing::info!(cert = %self.cert.display(), "reloaded the serving certificate");
                }
            }
            Err(e) => tracing::warn!(error = %e, "new certificate files are not usable yet; keeping the previous one"),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        self.current.read().ok().map(|c| c.2.clone())
    }
}

struct AppState<S> {
    pending: S,
    helper: HelperSettings,
}

/// The routes, over any pending store (KV in production, memory in tests).
pub fn router<S: PendingStore + Send + Sync + 'static>(pending: S, helper: HelperSettings) -> Router {
    let state = Arc::new(AppState { pending, helper });
    Router::new()
        // Liveness and readiness: the process answers over TLS, so its certificate loaded (serve()
        // refuses to start without one). Readiness asks nothing of NATS: admission must answer
        // (allowing, unpatched) even while NATS is away.
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/admission/pods",
            post(|State(s): State<Arc<AppState<S>>>, body: Bytes| async move {
                Json(admit::review(&s.pending, &s.helper, &body).await)
            }),
        )
        .with_state(state)
}

/// `POST /validate/workloads`: the validating webhook for Deployment/StatefulSet UPDATE. It always
/// allows; when the pod template changed it publishes `coracle.k8s.workload.updated` (waiting at most
/// `PUBLISH_WAIT`, so a slow NATS never slows a deploy; a lost event is logged). Merge it into
/// `router`'s routes: `router(..).merge(workload_webhook(publisher))`.
pub fn workload_webhook(publisher: Publisher) -> Router {
    Router::new()
        .route(
            "/validate/workloads",
            post(|State(p): State<Arc<Publisher>>, body: Bytes| async move {
                let review = triggers::review_workload(&body, chrono::Utc::now());
                match (&review.updated, &review.skipped) {
                    (Some(event), _) => match tokio::time::timeout(PUBLISH_WAIT, p.publish(event)).await {
                        Ok(Ok(_)) => tracing::info!(id = %event.id, "published coracle.k8s.workload.updated"),
                        Ok(Err(e)) => tracing::warn!(id = %event.id, "workload update not published: {e}"),
                        Err(_) => {
                            tracing::warn!(id = %event.id, "workload update not published within {PUBLISH_WAIT:?}")
                        }
                    },
                    (None, why) => {
                        tracing::debug!("workload review: nothing to publish: {}", why.as_deref().unwrap_or(""))
                    }
                }
                Json(review.response)
            }),
        )
        .with_state(Arc::new(publisher))
}

/// How long the workload webhook waits for NATS before answering anyway.
const PUBLISH_WAIT: Duration = Duration::from_secs(3);

/// Accepts TLS connections until the process ends.
pub async fn serve(addr: &str, cert: &Path, key: &Path, app: Router) -> Result<(), ServeError> {
    let resolver = Arc::new(ReloadingCert::new(cert, key)?);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls { path: cert.to_path_buf(), reason: e.to_string() })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Listen { addr: addr.to_string(), reason: e.to_string() })?;
    tracing::info!(%addr, "serving HTTPS: /admission/pods, /validate/workloads, /healthz, /readyz");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
