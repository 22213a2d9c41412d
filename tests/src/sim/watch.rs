//! `?watch=true`: a newline-delimited stream of WatchEvents replayed from the store's history.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::errors::ApiError;
use super::resources::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{Change, ChangeType, Store};
use super::table;

/// What one watch request asked for.
pub struct WatchRequest {
    pub res: &'static ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub since: Option<u64>,
    pub timeout: Duration,
    /// `Some(includeObject)` when the client asked for Table rendering (kubectl get -w).
    pub table: Option<String>,
    /// Objects reduced to `PartialObjectMetadata` (kube's `watch_metadata`).
    pub metadata_only: bool,
    /// `sendInitialEvents=true` (streaming list): the current objects first whatever the resourceVersion,
    /// then a BOOKMARK annotated `k8s.io/initial-events-end`.
    pub initial_events_end: bool,
}

impl WatchRequest {
    fn matches(&self, change: &Change, object: &Value) -> bool {
        change.resource == self.res.index()
            && self.namespace.as_deref().is_none_or(|ns| ns == change.namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event a change becomes for this watch: a modification that makes an object start or stop
    /// matching the selectors is ADDED or DELETED, as on a real server.
    fn event_for(&self, change: &Change) -> Option<ChangeType> {
        let now = self.matches(change, &change.object);
        match change.change {
            ChangeType::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.matches(change, p));
                match (before, now) {
                    (true, true) => Some(ChangeType::Modified),
                    (false, true) => Some(ChangeType::Added),
                    (true, false) => Some(ChangeType::Deleted),
                    (false, false) => None,
                }
            }
            other => now.then_some(other),
        }
    }
}

struct State {
    req: WatchRequest,
    store: Store,
    pending: VecDeque<Bytes>,
    cursor: u64,
    latest: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    deadline: Instant,
    sent_definitions: bool,
    done: bool,
}

impl State {
    fn encode(&mut self, event: &str, object: &Value) -> Bytes {
        let object = match &self.req.table {
            Some(include) => {
                let first = !self.sent_definitions;
                self.sent_definitions = true;
                let rv = object["metadata"]["resourceVersion"].clone();
                table::render(
                    self.req.res,
                    std::slice::from_ref(object),
                    json!({"resourceVersion": rv}),
                    first,
                    include,
                )
            }
            None if self.req.metadata_only => table::partial(object),
            None => object.clone(),
        };
        let mut line = json!({"type": event, "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    fn error_event(&mut self, err: &ApiError) {
        let line = format!("{}\n", json!({"type": "ERROR", "object": err.to_status()}));
        self.pending.push_back(Bytes::from(line));
        self.done = true;
    }

    /// Queues the events of every change since the cursor.
    fn poll_store(&mut self) {
        // Mark the latest version seen before reading, so a commit racing with the read still wakes us.
        self.latest.borrow_and_update();
        match self.store.changes_after(self.cursor) {
            Ok(changes) => {
                for change in changes {
                    self.cursor = change.rv;
                    if let Some(event) = self.req.event_for(&change) {
                        let bytes = self.encode(event.as_str(), &change.object);
                        self.pending.push_back(bytes);
                    }
                }
            }
            Err(err) => self.error_event(&err),
        }
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            self.poll_store();
            if !self.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = self.latest.changed() => if changed.is_err() { self.done = true },
                _ = tokio::time::sleep_until(self.deadline) => self.done = true,
                _ = self.shutdown.changed() => self.done = true,
            }
        }
    }
}

/// Starts a watch: synthetic ADDED events first when no resourceVersion was given, then live changes until
/// `timeoutSeconds`, server shutdown, or the client going away. Errors before the stream starts (an
/// expired resourceVersion) are returned for a plain error response.
pub fn stream(store: Store, req: WatchRequest, shutdown: watch::Receiver<bool>) -> Result<Body, ApiError> {
    let latest = store.subscribe();
    let since = if req.initial_events_end { None } else { req.since };
    let (initial, cursor) = store.watch_start(req.res, req.namespace.as_deref(), &req.labels, &req.fields, since)?;
    let deadline = Instant::now() + req.timeout;
    let mut state = State {
        req,
        store,
        pending: VecDeque::new(),
        cursor,
        latest,
        shutdown,
        deadline,
        sent_definitions: false,
        done: false,
    };
    for object in &initial {
        let bytes = state.encode("ADDED", object);
        state.pending.push_back(bytes);
    }
    if state.req.initial_events_end {
        let bookmark = json!({
            "kind": state.req.res.kind,
            "apiVersion": state.req.res.api_version(),
            "metadata": {"resourceVersion": cursor.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}},
        });
        let line = format!("{}\n", json!({"type": "BOOKMARK", "object": bookmark}));
        state.pending.push_back(Bytes::from(line));
    }
    // A shutdown that began before this watch: end after what is queued.
    state.done = *state.shutdown.borrow();
    let chunks = futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    Ok(Body::from_stream(chunks))
}
