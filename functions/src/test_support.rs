//! Fixtures shared by the unit tests of several modules.

use coracle_events::{PlannedVolume, VolumeSource};

/// An emptyDir volume `data` of a bare pod, as the planner would plan it.
pub fn empty_dir(namespace: &str, pod: &str, node: &str) -> PlannedVolume {
    PlannedVolume {
        namespace: namespace.into(),
        pod: pod.into(),
        pod_uid: "0b9f3b36-1b8e-4f1a-9a43-5a0c0f9a2a11".into(),
        volume: "data".into(),
        node: node.into(),
        source: VolumeSource::EmptyDir,
        pvc: None,
        pvc_uid: None,
        pv: None,
        dir: "data".into(),
        identity: format!("pod/{pod}/data"),
    }
}
