//! The real-cluster end-to-end test (tests/real-cluster/run.sh): backup and restore on the
//! cluster of KUBECONFIG. It runs only with CORACLE_REAL_CLUSTER=1 and says so when skipped.

use std::process::Command;

#[test]
fn backup_and_restore_on_a_real_cluster() -> anyhow::Result<()> {
    if std::env::var("CORACLE_REAL_CLUSTER").as_deref() != Ok("1") {
        eprintln!(
            "skipping: no real cluster configured (set CORACLE_REAL_CLUSTER=1 and KUBECONFIG; see tests/real-cluster/README.md)"
        );
        return Ok(());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("real-cluster/run.sh");
    let status = Command::new("bash").arg(&script).status()?;
    anyhow::ensure!(status.success(), "{} failed: {status}", script.display());
    Ok(())
}
