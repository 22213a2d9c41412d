//! The restic adapter against real restic: 0.18 from .tools/bin always, 0.14 (Debian 12) when
//! installed.

use crate::common;

use common::*;
use coracle_volume_job::keys::RepositoryPassword;
use coracle_volume_job::restic::json::{self, Message};
use coracle_volume_job::restic::{BackupOptions, Repository, RepositoryState, Restic, ResticError, SnapshotFilter};
use std::path::Path;

fn adapter(program: &Path, repo: &Path) -> Restic {
    Restic::new(program, Repository::Local(repo.to_path_buf()), RepositoryPassword::new(PASSWORD.into()))
}

fn options(workdir: &Path, identity: &str, parent: Option<String>) -> BackupOptions {
    BackupOptions {
        workdir: workdir.to_path_buf(),
        host: "shop".into(),
        tags: vec!["backup=b1".into(), format!("identity={identity}")],
        parent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inits_leave_one_usable_repository() {
    for (label, program) in restics("concurrent_inits_leave_one_usable_repository") {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repos/shop");
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let r = adapter(&program, &repo);
                tokio::spawn(async move { r.ensure_repository().await })
            })
            .collect();
        let mut states = Vec::new();
        for racer in racers {
            states.push(racer.await.unwrap().unwrap_or_else(|e| panic!("{label}: {e}")));
        }
        assert_eq!(states.iter().filter(|s| **s == RepositoryState::Created).count(), 1, "{label}: {states:?}");
        assert!(states.iter().all(|s| *s != RepositoryState::Existed), "{label}: {states:?}");
        // Usable, with exactly one key, and no staging directories left behind.
        let (code, _, err) = raw(&program, &repo, PASSWORD, &["cat", "config"]);
        assert_eq!(code, 0, "{label}: {err}");
        assert_eq!(std::fs::read_dir(repo.join("keys")).unwrap().count(), 1, "{label}");
        let leftovers: Vec<_> =
            std::fs::read_dir(tmp.path().join("repos")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["shop"], "{label}");
        assert_eq!(adapter(&program, &repo).ensure_repository().await.unwrap(), RepositoryState::Existed, "{label}");
    }
}

#[tokio::test]
async fn a_repository_a_racing_init_damaged_is_reported() {
    let program = restic();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for repo in [&a, &b] {
        assert_eq!(raw(&program, repo, PASSWORD, &["init"]).0, 0);
    }
    // What a lost init race leaves: a key whose master key did not write the config.
    std::fs::copy(b.join("config"), a.join("config")).unwrap();
    let e = adapter(&program, &a).ensure_repository().await.unwrap_err();
    assert!(matches!(e, ResticError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains("several Jobs initialised it"), "{e}");
}

#[tokio::test]
async fn wrong_password_and_missing_restic_are_errors() {
    let program = restic();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("r");
    assert_eq!(raw(&program, &repo, "another-password", &["init"]).0, 0);
    let e = adapter(&program, &repo).ensure_repository().await.unwrap_err();
    assert!(e.to_string().contains("wrong password"), "{e}");
    assert!(!e.to_string().contains(PASSWORD), "{e}");
    let e = adapter(Path::new("/nonexistent/restic"), &repo).ensure_repository().await.unwrap_err();
    assert!(matches!(e, ResticError::Spawn { .. }), "{e}");
}

#[tokio::test]
async fn snapshots_by_tag_parent_and_short_ids() {
    for (label, program) in restics("snapshots_by_tag_parent_and_short_ids") {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let r = adapter(&program, &repo);
        r.ensure_repository().await.unwrap();
        let data = tmp.path().join("data");
        write_files(&data);

        let first = r.backup(&options(&data, "pvc:1", None), |_| {}).await.unwrap();
        assert_eq!(first.code, Some(0), "{label}: {first:?}");
        let first_id = first.summary.unwrap().snapshot_id.unwrap();
        let other = r.backup(&options(&data, "pvc:2", None), |_| {}).await.unwrap();
        assert_eq!(other.code, Some(0), "{label}");

        let by_identity = SnapshotFilter::new().host("shop").tag("identity", "pvc:1").unwrap();
        let parent = r.latest_snapshot(&by_identity).await.unwrap().unwrap();
        assert!(parent.id.starts_with(&first_id), "{label}: {} vs {first_id}", parent.id);
        assert_eq!(parent.id.len(), 64);
        assert_eq!(parent.tag("backup"), Some("b1"));
        assert_eq!(parent.hostname, "shop");

        std::fs::write(data.join("a.txt"), "changed\n").unwrap();
        let second = r.backup(&options(&data, "pvc:1", Some(parent.id.clone())), |_| {}).await.unwrap();
        let second_summary = second.summary.unwrap();
        assert_eq!(second_summary.files_changed, 1, "{label}");
        assert_eq!(second_summary.files_unmodified, 1, "{label}");
        let second_id = second_summary.snapshot_id.unwrap();

        // 0.14 reports short ids; find_snapshot resolves any unique prefix.
        let found = r.find_snapshot(&second_id[..8]).await.unwrap().unwrap();
        assert_eq!(found.parent.as_deref(), Some(parent.id.as_str()), "{label}");
        assert_eq!(r.latest_snapshot(&by_identity).await.unwrap().unwrap().id, found.id, "{label}");
        assert!(r.find_snapshot("0000000000").await.unwrap().is_none(), "{label}");
        assert!(r.snapshots(&SnapshotFilter::new().host("other")).await.unwrap().is_empty(), "{label}");
        assert_eq!(r.snapshots(&SnapshotFilter::new()).await.unwrap().len(), 3, "{label}");
    }
}

#[tokio::test]
async fn snapshots_are_relocatable() {
    for (label, program) in restics("snapshots_are_relocatable") {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let r = adapter(&program, &repo);
        r.ensure_repository().await.unwrap();
        let data = tmp.path().join("pods/0f2c7f4e-3c1a-4a8e-9b7d-2f0e1d2c3b4a/volumes/kubernetes.io~csi/pv-1/mount");
        write_files(&data);
        let run = r.backup(&options(&data, "pvc:1", None), |_| {}).await.unwrap();
        let id = run.summary.unwrap().snapshot_id.unwrap();

        let (code, out, err) = raw(&program, &repo, PASSWORD, &["ls", &id]);
        assert_eq!(code, 0, "{err}");
        let listed: Vec<&str> = out.lines().filter(|l| l.starts_with('/')).collect();
        assert_eq!(listed, ["/a.txt", "/sub", "/sub/b.bin"], "{label}: {out}");

        let target = tmp.path().join("elsewhere");
        let (code, _, err) = raw(&program, &repo, PASSWORD, &["restore", &id, "--target", target.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "hello coracle\n", "{label}");
        assert_eq!(std::fs::read(target.join("sub/b.bin")).unwrap().len(), 300_000, "{label}");
    }
}

/// Every line real restic prints for a backup with unreadable items parses into a known
/// message; the adapter collects the summary, the item errors and exit code 3.
#[tokio::test]
async fn parses_real_output_with_unreadable_items() {
    for (label, program) in restics("parses_real_output_with_unreadable_items") {
        let tmp = tempfile::tempdir().unwrap();
        let Some(limited) = restic_without_dac(&program, tmp.path(), "parses_real_output_with_unreadable_items") else {
            return;
        };
        let repo = tmp.path().join("repo");
        let r = adapter(&limited, &repo);
        r.ensure_repository().await.unwrap();
        let data = tmp.path().join("data");
        write_files(&data);
        std::fs::write(data.join("locked"), "secret").unwrap();
        std::fs::create_dir(data.join("lockeddir")).unwrap();
        std::fs::write(data.join("lockeddir/x"), "x").unwrap();
        for p in ["locked", "lockeddir"] {
            std::fs::set_permissions(data.join(p), std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        }

        let mut seen = Vec::new();
        let run = r.backup(&options(&data, "pvc:1", None), |m| seen.push(m.clone())).await.unwrap();
        assert_eq!(run.code, Some(3), "{label}: {run:?}");
        let summary = run.summary.clone().unwrap();
        assert!(summary.snapshot_id.is_some(), "{label}");
        assert_eq!(summary.total_files_processed, 2, "{label}: {summary:?}");
        let items: Vec<&str> = run.errors.iter().map(|e| e.item.as_str()).collect();
        assert!(items.iter().any(|i| i.ends_with("locked")), "{label}: {items:?}");
        assert!(items.iter().any(|i| i.ends_with("lockeddir")), "{label}: {items:?}");
        for m in &seen {
            match m {
                Message::Status(_) | Message::Summary(_) | Message::Error(_) | Message::ExitError(_) => {}
                Message::Text(t) => assert!(t.contains("could not be read"), "{label}: unexpected text {t:?}"),
                other => panic!("{label}: unexpected {other:?}"),
            }
        }
        println!("{} ({}): {} messages, errors {:?}", label, version(&program), seen.len(), run.errors);
        if version(&program).contains("0.14") {
            // 0.14: short id, plain-text warning, Go error values.
            assert_eq!(summary.snapshot_id.unwrap().len(), 8);
            assert!(run.text_tail.contains("at least one source file could not be read"), "{}", run.text_tail);
            assert!(run.errors.iter().any(|e| e.message.is_none()), "{:?}", run.errors);
        } else {
            assert_eq!(summary.snapshot_id.unwrap().len(), 64);
            assert_eq!(run.exit_error.as_ref().and_then(|e| e.code), Some(3));
            assert!(run.errors.iter().all(|e| e.message.is_some()), "{:?}", run.errors);
            assert!(summary.backup_start.is_some() && summary.data_added_packed.is_some());
        }
    }
}

/// Status lines from a backup big enough for restic to report progress.
#[tokio::test]
async fn parses_real_status_lines() {
    for (label, program) in restics("parses_real_status_lines") {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        // Incompressible data, so restic is busy for a while.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for f in 0..4 {
            let bytes: Vec<u8> = (0..8_000_000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            std::fs::write(data.join(format!("f{f}")), bytes).unwrap();
        }
        assert_eq!(raw(&program, &repo, PASSWORD, &["init"]).0, 0);
        let out = std::process::Command::new(&program)
            .args(["backup", "--json", "."])
            .current_dir(&data)
            .env("RESTIC_REPOSITORY", &repo)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("RESTIC_PROGRESS_FPS", "50")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{label}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let messages: Vec<Message> = stdout.lines().filter_map(json::parse_line).collect();
        let statuses: Vec<_> =
            messages.iter().filter_map(|m| if let Message::Status(s) = m { Some(s) } else { None }).collect();
        assert!(!statuses.is_empty(), "{label}: no status lines in {stdout}");
        assert!(statuses.iter().all(|s| (0.0..=1.0).contains(&s.percent_done)), "{label}");
        assert!(statuses.iter().any(|s| s.total_bytes.is_some()), "{label}");
        let Some(Message::Summary(summary)) = messages.last() else { panic!("{label}: {stdout}") };
        assert_eq!(summary.total_files_processed, 4, "{label}");
        assert_eq!(summary.total_bytes_processed, 32_000_000, "{label}");
        println!("{label}: {} status lines, first {:?}", statuses.len(), statuses[0]);
    }
}
