//! The explicit snapshot of cluster objects a planner works on. Adapters fill it from the API
//! server (one paginated LIST per namespace and kind) or from a YAML dump; planners never call
//! out while planning.

use crate::settings::Settings;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};

#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub pvs: Vec<PersistentVolume>,
    /// Needed to walk a pod's owner from ReplicaSet up to its Deployment.
    pub replica_sets: Vec<ReplicaSet>,
    pub settings: Settings,
}
