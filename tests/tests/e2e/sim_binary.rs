//! The `coracle-sim serve` binary: loads fixture files, writes a kubeconfig that kube and kubectl read,
//! and exits cleanly on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use coracle_tests::process::{pid_alive, terminate, wait_with_timeout};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::ResourceExt as _;

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop}\nspec: {containers: []}\nstatus: {phase: Running}\n";
const NAMESPACES: &str = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

fn wait_for_file(path: &Path, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.metadata().is_ok_and(|m| m.len() > 0) {
        if let Some(status) = child.try_wait()? {
            bail!("coracle-sim exited early: {status}");
        }
        if Instant::now() > deadline {
            bail!("coracle-sim wrote no kubeconfig within 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

async fn check_cluster(kubeconfig: &Path) -> Result<()> {
    let config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(kubeconfig)?, &KubeConfigOptions::default()).await?;
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config)?;
    let pods: Vec<String> = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(pods, ["web-0"]);
    let namespaces = Api::<Namespace>::all(client).list(&ListParams::default()).await?;
    assert_eq!(namespaces.items.len(), 1);
    Ok(())
}

#[tokio::test]
async fn serve_loads_files_writes_a_kubeconfig_and_stops_on_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (pods, namespaces, kubeconfig) =
        (dir.path().join("pods.yaml"), dir.path().join("ns.yaml"), dir.path().join("kubeconfig"));
    std::fs::write(&pods, PODS)?;
    std::fs::write(&namespaces, NAMESPACES)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_coracle-sim"))
        .arg("serve")
        .arg("--objects")
        .arg(&pods)
        .arg("--objects")
        .arg(&namespaces)
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting coracle-sim")?;
    let pid = child.id();
    let checked = async {
        wait_for_file(&kubeconfig, &mut child)?;
        check_cluster(&kubeconfig).await?;
        if Path::new("/usr/bin/kubectl").exists() {
            let out = Command::new("/usr/bin/kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "ns", "-o", "name"])
                .env("HOME", dir.path())
                .output()?;
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "namespace/shop");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    terminate(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(10))?;
    checked?;
    assert!(status.success(), "coracle-sim exited with {status} on SIGTERM");
    assert!(!pid_alive(pid));
    Ok(())
}

#[test]
fn serve_fails_clearly_on_a_bad_fixture() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_coracle-sim"))
        .args(["serve", "--objects"])
        .arg(&bad)
        .arg("--kubeconfig-out")
        .arg(dir.path().join("kubeconfig"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status = wait_with_timeout(&mut child, Duration::from_secs(20))?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    assert!(!status.success());
    assert!(stderr.contains("Widget"), "{stderr}");
    Ok(())
}
