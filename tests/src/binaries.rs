//! Finds the workspace's own binaries (`coracle`, `coracle-volume-job`) for tests that run
//! them as real processes, building them once when a test runs before `cargo build`.

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::sync::Mutex;

static BUILD: Mutex<()> = Mutex::new(());

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let deps = exe.parent().context("test binary has no directory")?;
    Ok(if deps.ends_with("deps") { deps.parent().map(PathBuf::from).unwrap_or_default() } else { deps.to_path_buf() })
}

/// The path of a workspace binary, built with cargo if it is not there yet.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = target_dir()?.join(name);
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--bins", "--workspace"])
            .current_dir(&root)
            .status()
            .context("running cargo build")?;
        if !status.success() || !path.exists() {
            bail!("could not build {name}");
        }
    }
    Ok(path)
}

/// A temporary directory for a test's files, under the target directory: it stays out of the
/// machine's `/tmp`, and a failed run leaves its files where `cargo clean` finds them.
pub fn scratch_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let base = target_dir()?.join("scratch");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    tempfile::Builder::new().prefix(prefix).tempdir_in(&base).context("creating a scratch directory")
}
