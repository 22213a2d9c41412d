//! Helpers shared by the integration tests: finding the real tools (scripts/install-tools.sh
//! puts them in .tools/bin), running restic directly to check results, and making restic
//! exit 3 even when the tests run as root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const PASSWORD: &str = "test-password-0123456789";

pub fn tools_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin")
}

/// PATH with .tools/bin first, so `cargo test` works without PATH tweaks.
pub fn path_env() -> String {
    format!("{}:{}", tools_bin().display(), std::env::var("PATH").unwrap_or_default())
}

fn find(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_env()).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// restic (>= 0.15 from .tools/bin or PATH). Required: run scripts/install-tools.sh.
pub fn restic() -> PathBuf {
    find("restic").expect("restic not found in .tools/bin or PATH: run scripts/install-tools.sh")
}

/// restic 0.14 (Debian 12), when installed; prints why a test is skipped otherwise.
pub fn restic_014(test: &str) -> Option<PathBuf> {
    let found = find("restic-0.14");
    if found.is_none() {
        println!("SKIPPED {test}: restic-0.14 not found in .tools/bin or PATH (scripts/install-tools.sh fetches it)");
    }
    found
}

/// Every restic this machine has: (label, program).
pub fn restics(test: &str) -> Vec<(&'static str, PathBuf)> {
    let mut all = vec![("restic", restic())];
    if let Some(old) = restic_014(test) {
        all.push(("restic-0.14", old));
    }
    all
}

pub fn version(program: &Path) -> String {
    let out = Command::new(program).arg("version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs restic directly against `repo`; returns (exit code, stdout, stderr).
pub fn raw(program: &Path, repo: &Path, password: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(program)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", password)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn snapshots_json(program: &Path, repo: &Path, password: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = raw(program, repo, password, &["snapshots", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// A restic that cannot read mode-000 files. Tests run as root here, and root reads
/// everything through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so restic is started through
/// `setpriv` with both dropped from its bounding set. `None` (with a message) if impossible.
pub fn restic_without_dac(program: &Path, dir: &Path, test: &str) -> Option<PathBuf> {
    if !is_root() {
        return Some(program.to_path_buf());
    }
    let ok = Command::new("setpriv")
        .args(["--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED {test}: running as root and setpriv cannot drop CAP_DAC_OVERRIDE");
        return None;
    }
    let wrapper = dir.join(format!("{}-without-dac", program.file_name().unwrap().to_string_lossy()));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set=-dac_override,-dac_read_search \
             --inh-caps=-dac_override,-dac_read_search {} \"$@\"\n",
            program.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Some(wrapper)
}

/// A directory with files restic backs up.
pub fn write_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "hello coracle\n").unwrap();
    std::fs::write(dir.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
}
