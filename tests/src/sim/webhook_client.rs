//! The HTTPS client the simulated API server calls admission webhooks with: one POST per call over a fresh
//! connection, the webhook's caBundle as the only trusted root, HTTP/1.1, the whole exchange under the
//! webhook's timeout. Errors read like Go's (`Post "<url>": ...`) where that is easy.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Request};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::tls;

/// Larger webhook responses are refused (kube-apiserver also caps what it reads).
const RESPONSE_LIMIT: usize = 16 << 20;

/// Where and how to reach one webhook.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The URL as kube-apiserver names it in errors, `?timeout=` included.
    pub url: String,
    /// The address actually dialled: the URL's host, or a service's endpoint.
    pub connect_host: String,
    pub connect_port: u16,
    /// The name the server certificate must carry: the URL's host, or `<service>.<namespace>.svc`.
    pub server_name: String,
    /// `Host` header.
    pub authority: String,
    pub path_and_query: String,
    /// PEM; an empty bundle trusts nothing.
    pub ca_bundle: Vec<u8>,
}

/// POSTs a JSON body; the status code and body of the answer, or why there is none.
pub(crate) async fn post_json(target: &Target, body: Vec<u8>, timeout: Duration) -> Result<(u16, Bytes), String> {
    match tokio::time::timeout(timeout, exchange(target, body)).await {
        Ok(result) => result.map_err(|e| format!("Post \"{}\": {e}", target.url)),
        Err(_) => Err(format!("Post \"{}\": context deadline exceeded", target.url)),
    }
}

async fn exchange(target: &Target, body: Vec<u8>) -> Result<(u16, Bytes), String> {
    let config =
        tls::client_config(&target.ca_bundle).map_err(|e| format!("unable to load root certificates: {e:#}"))?;
    let server_name = ServerName::try_from(target.server_name.clone())
        .map_err(|e| format!("invalid TLS server name {:?}: {e}", target.server_name))?;
    let address = format!("{}:{}", target.connect_host, target.connect_port);
    let tcp = tokio::net::TcpStream::connect((target.connect_host.as_str(), target.connect_port))
        .await
        .map_err(|e| format!("dial tcp {address}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await.map_err(|e| {
        if e.to_string().contains("invalid peer certificate") {
            format!("tls: failed to verify certificate: {e}")
        } else {
            format!("tls: {e}")
        }
    })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let request = Request::post(target.path_and_query.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, */*")
        .header(header::USER_AGENT, "kube-apiserver-admission")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), RESPONSE_LIMIT).collect().await.map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    };
    // The connection is driven here rather than spawned, so a timeout drops it with the call.
    tokio::pin!(connection);
    tokio::select! {
        result = response => result,
        ended = &mut connection => Err(match ended {
            Ok(()) => "EOF".to_string(),
            Err(e) => e.to_string(),
        }),
    }
}
