//! `coracle serve` as a real process: HTTPS only, admission answered from pending restores in
//! a real NATS KV bucket, and a rotated certificate picked up without a restart.

use anyhow::{bail, Context as _};
use coracle_events::{BackupRef, PendingRestore, RestoreRef, RestoreTarget};
use coracle_functions::kv_json::JsonKv;
use coracle_functions::plan_restore::pending_key;
use coracle_functions::restore_state::PendingEntry;
use coracle_tests::binaries::{scratch_dir, workspace_bin};
use coracle_tests::harness::ChildGuard;
use coracle_tests::nats::NatsServer;
use coracle_tests::process::die_with_parent;
use coracle_tests::tls::{client_config, test_ca_and_cert};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One HTTPS request on a fresh connection trusting only `ca_pem`.
async fn https(port: u16, ca_pem: &str, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_pem.as_bytes())?));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let tls = connector.connect(name, tcp).await.context("TLS handshake")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes().to_vec()))
}

fn write_pair(dir: &Path, cert: &str, key: &str) -> anyhow::Result<()> {
    // Write then rename, as a kubelet updates a mounted Secret: never a half-written file.
    for (name, content) in [("tls.crt", cert), ("tls.key", key)] {
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_admission_over_tls_only_and_reloads_its_certificate() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    coracle_events::bootstrap::ensure(&js).await?;
    let pending: JsonKv<PendingEntry> = JsonKv::open(&js, coracle_events::subjects::KV_RESTORES, "pending.").await?;
    let entry = PendingEntry::new(PendingRestore {
        restore: RestoreRef { name: "shop-restore".into(), uid: "4f0c1d7e-2b8a-4c51-9e0f-6a7b8c9d0e1f".into() },
        backup: BackupRef { name: "nightly".into(), uid: "b".into() },
        target_namespace: "shop".into(),
        target: RestoreTarget::Pvc { claim: "web-data".into() },
        source_namespace: "shop".into(),
        source_pod: "web-old".into(),
        source_volume: "data".into(),
        snapshot_id: "s-data".into(),
        identity: "pvc/u".into(),
    });
    pending.create(&pending_key("shop", &entry.pending.target), &entry).await?;

    let dir = scratch_dir("serve-https")?;
    let (ca1, cert1, key1) = test_ca_and_cert(&["127.0.0.1"]);
    write_pair(dir.path(), &cert1, &key1)?;
    let port = free_port()?;
    let mut cmd = Command::new(workspace_bin("coracle")?);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--nats", &nats.url()])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut cmd);
    let _server = ChildGuard(cmd.spawn()?);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match https(port, &ca1, "GET", "/healthz", vec![]).await {
            Ok((200, body)) if body == b"ok" => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => bail!("coracle serve never became healthy: {other:?}"),
        }
    }

    // Admission over HTTPS, answered from the KV entry.
    let review = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../functions/tests/fixtures/admission/generate-name-pod.json"
    ))?;
    let (status, body) = https(port, &ca1, "POST", "/admission/pods", review).await?;
    assert_eq!(status, 200);
    let resp: Value = serde_json::from_slice(&body)?;
    assert_eq!(resp["response"]["allowed"], true);
    assert_eq!(resp["response"]["patchType"], "JSONPatch", "{resp}");
    let claimed = pending.get(&pending_key("shop", &entry.pending.target)).await?.context("entry")?.0;
    assert!(claimed.claim.is_some(), "the entry was claimed in KV");

    // Plain HTTP gets no HTTP answer: the port speaks TLS only.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await?;
    plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut plain, &mut buf)).await??;
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "plain HTTP must not be served");

    // Rotate the certificate: new connections present the new one.
    let (ca2, cert2, key2) = test_ca_and_cert(&["127.0.0.1"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_pair(dir.path(), &cert2, &key2)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match https(port, &ca2, "GET", "/healthz", vec![]).await {
            Ok((200, _)) => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => bail!("the rotated certificate was never served: {other:?}"),
        }
    }
    assert!(https(port, &ca1, "GET", "/healthz", vec![]).await.is_err(), "the old certificate is no longer served");
    Ok(())
}
