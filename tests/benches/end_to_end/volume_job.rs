//! B5, B6, B7 (issue 8): the real release `coracle-volume-job backup` against restic run
//! directly, side by side in one run, on data generated under `bench/tmp/volume_job`.
//!
//! - **B5** one volume of `CORACLE_BENCH_DATA_MB` (default 1024) MiB of mixed files: large
//!   random files, medium random files and many small text files. Per repetition, fresh
//!   repositories: the job binary's first backup (it initialises the repository, as in a
//!   cluster) against `restic init` + `restic backup` run directly; then ~1% of the files change
//!   and each does its incremental backup (restic finds its parent by path; the job is given
//!   it as plan-backup gives it, a parent hint recorded from the first backup's result). Wall
//!   ratio = median job / median restic. The job binary's own peak memory is its `VmHWM`,
//!   sampled while it runs (restic, its child, is not counted).
//! - **B6** 8 volumes of DATA_MB/8 each on one node, backed up by 8 job processes of which at
//!   most 1, 2 or 4 run at once (an Indexed Job's `parallelism`), into one namespace repository
//!   (initialised beforehand, emptied between runs). Speed-up = wall(1) / wall(c).
//! - **B7** the B5 volume after its pod was re-created: the pod directory moves to a new pod uid
//!   (a PVC's data is the same inodes, bind-mounted at a new path). Timed: the job binary (parent
//!   by identity: plan-backup's hint for the PVC's identity) against `restic backup` run
//!   directly in the new directory with restic's default parent choice (same host and same
//!   paths: none, so every file is read and hashed again), each against its own copy of the
//!   repository holding the first snapshot.
//!   Also timed, as the floor: restic run directly with the right `--parent` given by hand.
//!
//! `cargo bench -p coracle-tests --bench end_to_end -- volume_job` writes
//! `target/bench/volume_job.json`.
//! Needs the release binaries (`cargo build --release --bins`) and restic (.tools/bin).

use crate::common::{data_dir, env_num, full_run, measure, round, secs, tool, write_report, Measured, Summary};
use anyhow::{ensure, Context as _};
use coracle_events::{PlannedVolume, VolumeSource};
use coracle_tests::binaries::workspace_bin;
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const NAMESPACE: &str = "shop";
const MASTER_KEY: &str = "bench-master-key-0123456789abcdef0123456789abcdef";
const BACKUP_UID: &str = "6a1f0c2e-0000-4000-8000-00000000b005";
const PVC_UID: &str = "0d5e2c9a-1b7f-4e3d-9a8c-7f6e5d4c3b2a";

fn pod_uid(n: u32) -> String {
    format!("3b7c1d2e-0000-4000-8000-{n:012x}")
}

/// xorshift64*: incompressible bytes quickly, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Mixed files totalling about `bytes`: 40% in 8 large random files, 40% in medium random
/// files of 256 KiB, 20% in small text files of 8 KiB (compressible), in nested directories.
/// Returns the file count.
fn generate(dir: &Path, bytes: u64, seed: u64) -> anyhow::Result<u64> {
    let mut rng = Rng(seed | 1);
    let mut files = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    std::fs::create_dir_all(dir.join("large"))?;
    let large = bytes * 4 / 10 / 8;
    for i in 0..8 {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("large/blob-{i}.bin")))?);
        let mut left = large;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        files += 1;
    }
    let medium = (bytes * 4 / 10 / (256 << 10)).max(1);
    for i in 0..medium {
        let sub = dir.join(format!("medium/{:02}", i % 32));
        std::fs::create_dir_all(&sub)?;
        rng.fill(&mut buf[..256 << 10]);
        std::fs::write(sub.join(format!("part-{i}.dat")), &buf[..256 << 10])?;
        files += 1;
    }
    let small = (bytes * 2 / 10 / (8 << 10)).max(1);
    let words = ["backup", "volume", "restic", "coracle", "pod", "node", "snapshot", "kubelet"];
    for i in 0..small {
        let sub = dir.join(format!("small/{:03}", i % 256));
        std::fs::create_dir_all(&sub)?;
        let mut text = String::with_capacity(8 << 10);
        while text.len() < 8 << 10 {
            text.push_str(words[(rng.next() % 8) as usize]);
            text.push(if rng.next().is_multiple_of(12) { '\n' } else { ' ' });
        }
        std::fs::write(sub.join(format!("doc-{i}.txt")), &text)?;
        files += 1;
    }
    Ok(files)
}

/// Changes about 1% of the files (appends to small ones, rewrites a slice of medium ones).
fn modify(dir: &Path, round: u64) -> anyhow::Result<()> {
    let mut rng = Rng(0x9e37_79b9 ^ round);
    for (n, entry) in walk(dir)?.into_iter().enumerate() {
        if n % 100 != (round as usize % 100) {
            continue;
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&entry)?;
        let mut extra = [0u8; 4096];
        rng.fill(&mut extra);
        f.write_all(&extra)?;
    }
    Ok(())
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// A fake kubelet pods tree and everything the job binary and restic need around it.
struct Site {
    root: PathBuf,
    job: PathBuf,
    restic: PathBuf,
    /// restic's version number, which the job image stamps into CORACLE_RESTIC_VERSION.
    restic_version: String,
    password: String,
}

impl Site {
    fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// The CSI mount of `pv` in pod `uid`.
    fn mount(&self, uid: &str, pv: &str) -> PathBuf {
        self.pods().join(uid).join("volumes/kubernetes.io~csi").join(pv).join("mount")
    }

    fn volume(&self, pod: &str, uid: &str, pv: &str, pvc_uid: &str) -> PlannedVolume {
        PlannedVolume {
            namespace: NAMESPACE.into(),
            pod: pod.into(),
            pod_uid: uid.into(),
            volume: "data".into(),
            node: "node-1".into(),
            source: VolumeSource::Pvc,
            pvc: Some(format!("data-{pod}")),
            pvc_uid: Some(pvc_uid.into()),
            pv: Some(pv.into()),
            dir: pv.into(),
            identity: format!("pvc/{pvc_uid}"),
        }
    }

    /// `coracle-volume-job backup` for index `index` of `volumes`, repositories under `prefix`.
    fn job(&self, prefix: &Path, cache: &Path, volumes: &[PlannedVolume], index: usize, name: &str) -> Command {
        self.hinted_job(prefix, cache, volumes, index, name, None)
    }

    /// The same with plan-backup's parent hint for the volume (`CORACLE_PARENTS`), as a Job gets it
    /// once the previous backup of its identity is recorded.
    fn hinted_job(
        &self,
        prefix: &Path,
        cache: &Path,
        volumes: &[PlannedVolume],
        index: usize,
        name: &str,
        parent: Option<&str>,
    ) -> Command {
        let mut cmd = Command::new(&self.job);
        cmd.arg("backup")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .env("CORACLE_JOB_NAME", format!("coracle-backup-{name}"))
            .env("CORACLE_REPOSITORY_PREFIX", prefix)
            .env("CORACLE_MASTER_KEY", MASTER_KEY)
            .env("CORACLE_TERMINATION_LOG", self.root.join(format!("termination-{name}-{index}")))
            .env("CORACLE_RESTIC", &self.restic)
            .env("CORACLE_RESTIC_VERSION", &self.restic_version)
            .env("RESTIC_CACHE_DIR", cache)
            .env("CORACLE_VOLUMES", serde_json::to_string(volumes).unwrap_or_default())
            .env("CORACLE_BACKUP_NAME", name)
            .env("CORACLE_BACKUP_UID", BACKUP_UID)
            .env("CORACLE_PODS_ROOT", self.pods())
            .env("CORACLE_LOG", "warn");
        if let (Some(parent), Some(volume)) = (parent, volumes.get(index)) {
            cmd.env("CORACLE_PARENTS", json!({ volume.identity.clone(): parent }).to_string());
        }
        cmd
    }

    /// The snapshot a finished job index reported.
    fn snapshot(&self, name: &str, index: usize) -> anyhow::Result<String> {
        let t = self.termination(name, index)?;
        find(&t, "snapshotId").and_then(Value::as_str).map(str::to_string).context(format!("no snapshot id: {t}"))
    }

    fn termination(&self, name: &str, index: usize) -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(self.root.join(format!("termination-{name}-{index}")))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// restic run directly, as a user would: in `dir`, on `repo`.
    fn restic(&self, repo: &Path, cache: &Path, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.restic);
        cmd.args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RESTIC_REPOSITORY", repo)
            .env("RESTIC_PASSWORD", &self.password)
            .env("RESTIC_CACHE_DIR", cache)
            .env("HOME", &self.root);
        cmd
    }
}

fn fresh(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    ensure!(status.success(), "cp -a {} {}", from.display(), to.display());
    Ok(())
}

/// A value in the termination message, wherever it is nested.
fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map.get(key).or_else(|| map.values().find_map(|x| find(x, key))),
        Value::Array(items) => items.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}

pub fn run() -> anyhow::Result<()> {
    let full = full_run();
    let data_mb = if full { env_num("CORACLE_BENCH_DATA_MB", 1024) } else { 8 };
    let reps = if full { env_num("CORACLE_BENCH_REPS", 3).max(1) } else { 1 };
    let root = data_dir("volume_job")?;
    let password = coracle_volume_job::keys::namespace_password(MASTER_KEY.as_bytes(), NAMESPACE, 1);
    let restic = tool("restic");
    let restic_version =
        String::from_utf8_lossy(&Command::new(&restic).arg("version").output()?.stdout).trim().to_string();
    let number = coracle_volume_job::restic::ResticVersion::parse(&restic_version)
        .context("restic version printed no version")?
        .to_string();
    let site = Site {
        root: root.clone(),
        job: workspace_bin("coracle-volume-job")?,
        restic,
        restic_version: number,
        password,
    };
    println!("volume_job: {data_mb} MiB of data, {reps} repetition(s), {restic_version}");

    // ---- B5 ------------------------------------------------------------------------------
    let uid_a = pod_uid(1);
    let pv = "pvc-0d5e2c9a";
    let mount = site.mount(&uid_a, pv);
    std::fs::create_dir_all(&mount)?;
    let started = std::time::Instant::now();
    let files = generate(&mount, data_mb << 20, 0x5eed)?;
    println!("generated {files} files in {:.1} s", started.elapsed().as_secs_f64());
    let volume_a = site.volume("db-0", &uid_a, pv, PVC_UID);
    let (mut job_first, mut job_incr, mut restic_first, mut restic_incr) = (vec![], vec![], vec![], vec![]);
    let mut own_mem = Vec::new();
    for rep in 0..reps {
        let (jprefix, rrepo) = (fresh(&root.join("b5-job-repos"))?, root.join("b5-restic-repo"));
        if rrepo.exists() {
            std::fs::remove_dir_all(&rrepo)?;
        }
        let (jcache, rcache) = (fresh(&root.join("b5-job-cache"))?, fresh(&root.join("b5-restic-cache"))?);
        let vols = [volume_a.clone()];
        // Alternate which goes first, so neither always meets a warmer page cache.
        let order = if rep % 2 == 0 { [true, false] } else { [false, true] };
        for job_first_turn in order {
            if job_first_turn {
                let (m, _) = measure(&mut site.job(&jprefix, &jcache, &vols, 0, &format!("b5-first-{rep}")), true)?;
                job_first.push(secs(m.wall));
                own_mem.extend(m.own_hwm_kib);
            } else {
                let start = std::time::Instant::now();
                measure(&mut site.restic(&rrepo, &rcache, &mount, &["init"]), false)?;
                measure(&mut site.restic(&rrepo, &rcache, &mount, &["backup", "--host", NAMESPACE, "."]), false)?;
                restic_first.push(secs(start.elapsed()));
            }
        }
        modify(&mount, rep)?;
        for job_turn in order {
            if job_turn {
                let parent = site.snapshot(&format!("b5-first-{rep}"), 0)?;
                let mut job = site.hinted_job(&jprefix, &jcache, &vols, 0, &format!("b5-incr-{rep}"), Some(&parent));
                let (m, _) = measure(&mut job, true)?;
                job_incr.push(secs(m.wall));
                own_mem.extend(m.own_hwm_kib);
                let t = site.termination(&format!("b5-incr-{rep}"), 0)?;
                ensure!(find(&t, "parentSnapshot").is_some_and(|p| p.is_string()), "incremental without parent: {t}");
            } else {
                let (m, _) =
                    measure(&mut site.restic(&rrepo, &rcache, &mount, &["backup", "--host", NAMESPACE, "."]), false)?;
                restic_incr.push(secs(m.wall));
            }
        }
    }
    let (jf, rf, ji, ri) =
        (Summary::of(&job_first), Summary::of(&restic_first), Summary::of(&job_incr), Summary::of(&restic_incr));
    let own_mb = own_mem.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    let b5 = json!({
        "data_mib": data_mb, "files": files, "repetitions": reps, "restic": restic_version,
        "job_first_s": jf.json(), "restic_first_s": rf.json(),
        "job_incremental_s": ji.json(), "restic_incremental_s": ri.json(),
        "ratio_first": round(jf.median / rf.median), "ratio_incremental": round(ji.median / ri.median),
        "job_own_peak_rss_mb": round(own_mb),
    });
    println!("B5 {b5}");

    // ---- B7 ------------------------------------------------------------------------------
    // One first backup into a repository, copied so each contender has its own.
    let (p_job, p_restic) = (fresh(&root.join("b7-job-repos"))?, root.join("b7-restic-repos"));
    let c_job = fresh(&root.join("b7-job-cache"))?;
    measure(&mut site.job(&p_job, &c_job, std::slice::from_ref(&volume_a), 0, "b7-base"), false)?;
    if p_restic.exists() {
        std::fs::remove_dir_all(&p_restic)?;
    }
    copy_tree(&p_job, &p_restic)?;
    let c_restic = root.join("b7-restic-cache");
    if c_restic.exists() {
        std::fs::remove_dir_all(&c_restic)?;
    }
    copy_tree(&c_job, &c_restic)?;
    let (mut with_identity, mut path_based, mut restic_given_parent) = (vec![], vec![], vec![]);
    let mut current = uid_a.clone();
    let base = site.snapshot("b7-base", 0)?;
    let mut parent = base.clone();
    for rep in 0..reps {
        // The pod is re-created: same PVC (same data, same inodes), new pod uid.
        let next = pod_uid(100 + rep as u32);
        std::fs::rename(site.pods().join(&current), site.pods().join(&next))?;
        current = next;
        let new_mount = site.mount(&current, pv);
        let volume = site.volume("db-0", &current, pv, PVC_UID);
        let name = format!("b7-{rep}");
        let order = if rep % 2 == 0 { [true, false] } else { [false, true] };
        for job_turn in order {
            if job_turn {
                let volumes = std::slice::from_ref(&volume);
                let (m, _) = measure(&mut site.hinted_job(&p_job, &c_job, volumes, 0, &name, Some(&parent)), false)?;
                with_identity.push(secs(m.wall));
                let t = site.termination(&name, 0)?;
                ensure!(
                    find(&t, "parentSnapshot").and_then(Value::as_str) == Some(&parent),
                    "not the hinted parent: {t}"
                );
                parent = site.snapshot(&name, 0)?;
            } else {
                let repo = p_restic.join(NAMESPACE);
                let (m, out) = measure(
                    &mut site.restic(&repo, &c_restic, &new_mount, &["backup", "--host", NAMESPACE, "."]),
                    false,
                )?;
                ensure!(!out.contains("using parent snapshot"), "restic found a parent by path: {out}");
                path_based.push(secs(m.wall));
            }
        }
        // The floor: restic itself, told the right parent (what the job runs, minus the job).
        let repo = p_restic.join(NAMESPACE);
        let args = ["backup", "--host", NAMESPACE, "--parent", base.as_str(), "."];
        let (m, out) = measure(&mut site.restic(&repo, &c_restic, &new_mount, &args), false)?;
        ensure!(out.contains("using parent snapshot"), "restic did not use the given parent: {out}");
        restic_given_parent.push(secs(m.wall));
    }
    // Later steps and reruns start from the first pod uid again.
    std::fs::rename(site.pods().join(&current), site.pods().join(&uid_a))?;
    let (wi, pb, gp) = (Summary::of(&with_identity), Summary::of(&path_based), Summary::of(&restic_given_parent));
    let b7 = json!({
        "data_mib": data_mb, "repetitions": reps,
        "job_identity_parent_s": wi.json(), "restic_path_parent_s": pb.json(),
        "restic_given_parent_s": gp.json(),
        "ratio": round(wi.median / pb.median), "floor_ratio": round(gp.median / pb.median),
    });
    println!("B7 {b7}");

    // ---- B6 ------------------------------------------------------------------------------
    let per_volume = (data_mb / 8).max(1);
    let mut volumes = Vec::new();
    for i in 0..8u32 {
        let uid = pod_uid(1000 + i);
        let pv = format!("pvc-b6-{i}");
        let dir = site.mount(&uid, &pv);
        std::fs::create_dir_all(&dir)?;
        generate(&dir, per_volume << 20, 0xb6 + u64::from(i))?;
        volumes.push(site.volume(&format!("web-{i}"), &uid, &pv, &format!("1c9e0b7a-0000-4000-8000-{i:012x}")));
    }
    let mut b6_runs = serde_json::Map::new();
    let mut walls = std::collections::BTreeMap::new();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for &parallelism in &[1usize, 2, 4] {
        let mut samples = Vec::new();
        for rep in 0..reps.min(2) {
            // A fresh, initialised repository: every run backs up all 8 volumes in full.
            let prefix = fresh(&root.join("b6-repos"))?;
            let cache = fresh(&root.join("b6-cache"))?;
            measure(&mut site.restic(&prefix.join(NAMESPACE), &cache, &root, &["init"]), false)?;
            let start = std::time::Instant::now();
            let next = std::sync::atomic::AtomicUsize::new(0);
            let results: Vec<anyhow::Result<Measured>> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..parallelism)
                    .map(|_| {
                        s.spawn(|| -> anyhow::Result<Measured> {
                            let mut last = None;
                            loop {
                                let index = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                if index >= volumes.len() {
                                    return last.context("no index left");
                                }
                                let name = format!("b6-c{parallelism}-{rep}");
                                let (m, _) = measure(&mut site.job(&prefix, &cache, &volumes, index, &name), false)?;
                                last = Some(m);
                            }
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked"))))
                    .collect()
            });
            for r in results {
                r?;
            }
            samples.push(secs(start.elapsed()));
        }
        let s = Summary::of(&samples);
        walls.insert(parallelism, s.median);
        b6_runs.insert(format!("parallelism_{parallelism}_s"), s.json());
    }
    let speedup = |c: usize| round(walls[&1] / walls[&c]);
    let b6 = json!({
        "volumes": 8, "mib_per_volume": per_volume, "cores": cores, "runs": b6_runs,
        "speedup_2": speedup(2), "speedup_4": speedup(4),
    });
    println!("B6 {b6}");

    if full {
        write_report("volume_job", &json!({"B5": b5, "B6": b6, "B7": b7}))?;
    } else {
        println!("smoke run only (no --bench argument): use `cargo bench` for the figures");
    }
    Ok(())
}
