//! What an image runs, since no image is ever pulled: every container's filesystem is the host's (see
//! [`super::container`]), and the image reference only decides the entrypoint, the default command and the
//! default `PATH`. The table:
//!
//! | image (last path segment, tag and digest ignored) | entrypoint | default command |
//! |---|---|---|
//! | `coracle`, `coracle-*` (e.g. `coracle-volume-job`, `coracle-restore-wait`) | the workspace binary of that name | — |
//! | `busybox`, `alpine`, `debian`, `ubuntu`, `bash` | — | `sh` (the host's) |
//! | anything else (`nginx`, `postgres`, an application image) | — | `sleep infinity`: a stand-in that keeps the container Running until the pod is deleted |
//!
//! As on Kubernetes, `command` replaces the entrypoint, `args` the default command; so `busybox` with
//! `command: [sh, -c, ...]` runs the host's `sh`, and any program on the host or in the simulation's binary
//! directories can be named in `command`.

/// Where the simulation's binary directories appear inside containers (`/sim/bin/0`, `/sim/bin/1`, ...).
pub(crate) const BIN_MOUNT_PREFIX: &str = "/sim/bin";
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) struct Image {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The image's name without registry, repository path, tag or digest.
pub(crate) fn short_name(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

pub(crate) fn image(reference: &str) -> Image {
    let name = short_name(reference);
    if name == "coracle" || name.starts_with("coracle-") {
        Image { entrypoint: vec![name.to_string()], cmd: Vec::new() }
    } else if matches!(name, "busybox" | "alpine" | "debian" | "ubuntu" | "bash") {
        Image { entrypoint: Vec::new(), cmd: vec!["sh".into()] }
    } else {
        Image { entrypoint: Vec::new(), cmd: vec!["sleep".into(), "infinity".into()] }
    }
}

/// The image's `PATH`: the simulation's binary directories first.
pub(crate) fn default_path(bin_dirs: usize) -> String {
    let mut parts: Vec<String> = (0..bin_dirs).map(|i| format!("{BIN_MOUNT_PREFIX}/{i}")).collect();
    parts.push(SYSTEM_PATH.to_string());
    parts.join(":")
}

/// The process to run, by Kubernetes' rules: `command` replaces the entrypoint, `args` the default command.
pub(crate) fn argv(image: &Image, command: Option<&[String]>, args: Option<&[String]>) -> Vec<String> {
    match (command, args) {
        (Some(c), a) if !c.is_empty() => [c, a.unwrap_or_default()].concat(),
        (_, Some(a)) if !a.is_empty() => [image.entrypoint.as_slice(), a].concat(),
        _ => [image.entrypoint.as_slice(), image.cmd.as_slice()].concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_table_and_argv_rules() {
        assert_eq!(short_name("ghcr.io/coracle-dev/coracle-volume-job:0.1.0"), "coracle-volume-job");
        assert_eq!(short_name("busybox@sha256:abc"), "busybox");
        assert_eq!(short_name("localhost:5000/nginx:1.27"), "nginx");
        let job = image("ghcr.io/coracle-dev/coracle-volume-job:0.1.0");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&job, None, Some(&s(&["backup"]))), s(&["coracle-volume-job", "backup"]));
        assert_eq!(argv(&job, Some(&s(&["coracle-volume-job", "backup"])), None), s(&["coracle-volume-job", "backup"]));
        assert_eq!(argv(&image("busybox:1.36"), None, None), s(&["sh"]));
        assert_eq!(
            argv(&image("busybox"), Some(&s(&["sh", "-c"])), Some(&s(&["echo hi"]))),
            s(&["sh", "-c", "echo hi"])
        );
        assert_eq!(argv(&image("nginx:1.27"), None, None), s(&["sleep", "infinity"]));
        assert_eq!(default_path(2), format!("/sim/bin/0:/sim/bin/1:{SYSTEM_PATH}"));
    }
}
