//! TLS for tests: a throwaway certificate authority with a server certificate, rustls configurations from
//! PEM (ring, like kube's), and a small HTTPS server for axum routers (admission webhooks, Coracle's own
//! HTTPS endpoints).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// A client that connects but never finishes the handshake must not hold a connection task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider every configuration here uses. Explicit, because rustls cannot pick a process default
/// when more than one provider is compiled in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh CA and a server certificate it signed for `hosts` (DNS names, or IP addresses such as
/// `127.0.0.1`, which become IP subject alternative names). Returns `(ca_pem, cert_pem, key_pem)`: give
/// `ca_pem` to clients (base64 of it is a webhook's `caBundle`), the other two to the server.
///
/// Panics only when rcgen rejects a host name (not ASCII), which is a mistake in the test.
pub fn test_ca_and_cert(hosts: &[&str]) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own, so another test CA is an unknown issuer rather than a same-named one that fails the
    // signature check.
    let ca_name = format!("coracle test CA {}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("generating the CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signing the CA");

    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap_or_else(|e| panic!("certificate for {hosts:?}: {e}"));
    params.distinguished_name.push(DnType::CommonName, hosts.first().copied().unwrap_or("coracle test server"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("generating the server key");
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("signing the server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Every certificate in a PEM bundle.
pub fn parse_certificates(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("reading PEM certificates: {e}"))
}

/// A client configuration that trusts exactly the certificates in `ca_pem` (none when it is empty, so every
/// server certificate is then refused), offering HTTP/1.1 by ALPN.
pub fn client_config(ca_pem: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certificates(ca_pem)? {
        roots.add(cert).context("adding a CA certificate")?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A server configuration presenting `cert_pem` (the leaf first, then any intermediates) with `key_pem`.
pub fn server_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    let chain = parse_certificates(cert_pem.as_bytes())?;
    if chain.is_empty() {
        anyhow::bail!("no certificate in the server PEM");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| anyhow!("reading the PEM key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the server certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An axum router served over HTTPS (HTTP/1.1) on 127.0.0.1, on its own thread and runtime so it answers
/// while the test blocks. Stopping (or dropping) it closes the listener and cancels open connections, slow
/// handlers included.
pub struct HttpsServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpsServer {
    /// Binds a free port on 127.0.0.1 and serves `router` with the certificate and key.
    pub fn start(router: Router, cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(cert_pem, key_pem)?));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        listener.set_nonblocking(true).context("making the listener non-blocking")?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the HTTPS server runtime")?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("registering the listener")?
        };
        let (shutdown, mut stop) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("https-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        let (tcp, _) = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok(conn) => conn,
                                Err(e) => {
                                    eprintln!("{addr}: accept failed: {e}");
                                    continue;
                                }
                            },
                            _ = stop.wait_for(|s| *s) => break,
                        };
                        let (acceptor, router) = (acceptor.clone(), router.clone());
                        tokio::spawn(async move {
                            // Handshake failures are what TLS tests provoke (a client with the wrong CA).
                            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                            else {
                                return;
                            };
                            let service = TowerToHyperService::new(router);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), service)
                                .await;
                        });
                    }
                });
                // Dropping the runtime here cancels the connection tasks still running.
            })
            .context("spawning the HTTPS server thread")?;
        Ok(Self { addr, shutdown, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops the server now; dropping it does the same.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    fn verify(ca_pem: &str, cert_pem: &str, host: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in parse_certificates(ca_pem.as_bytes()).expect("CA") {
            roots.add(ca).expect("root");
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().expect("verifier");
        let leaf = parse_certificates(cert_pem.as_bytes()).expect("leaf").remove(0);
        let name = ServerName::try_from(host.to_string()).expect("server name");
        verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn certificates_verify_only_against_their_ca_and_hosts() {
        let (ca, cert, key) = test_ca_and_cert(&["webhook.example.svc", "127.0.0.1"]);
        verify(&ca, &cert, "webhook.example.svc").expect("DNS name");
        verify(&ca, &cert, "127.0.0.1").expect("IP address");
        assert!(verify(&ca, &cert, "other.example.svc").is_err(), "a name the certificate does not carry");
        let (other_ca, _, _) = test_ca_and_cert(&["webhook.example.svc"]);
        assert!(verify(&other_ca, &cert, "webhook.example.svc").is_err(), "another CA");
        assert!(verify(&cert, &cert, "webhook.example.svc").is_err(), "the leaf is not a CA");
        server_config(&cert, &key).expect("server config");
        assert!(server_config(&ca, "no key here").is_err());
    }
}
