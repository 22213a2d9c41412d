//! An AWS Lambda Runtime API emulator, to run a `lambda_runtime` binary or task locally: tests queue
//! invocations and wait for what the function posts back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

use crate::server_thread::ServerThread;

/// What the function answered: `Ok(response JSON)` or `Err(error JSON)` (`{"errorType", "errorMessage"}`).
pub type LambdaResult = Result<Value, Value>;

/// The function ARN handed to every invocation.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function:coracle-test";
/// The deadline handed to every invocation, from when it is handed out.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(900);

struct Invocation {
    id: String,
    payload: Value,
}

#[derive(Default)]
struct Outcomes {
    /// Invocations queued or handed out and not answered yet.
    pending: HashSet<String>,
    results: HashMap<String, LambdaResult>,
    init_error: Option<Value>,
}

struct Shared {
    queue: mpsc::UnboundedSender<Invocation>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    outcomes: Mutex<Outcomes>,
    /// Woken whenever a result or an init error arrives.
    answered: Notify,
}

impl Shared {
    fn outcomes(&self) -> MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

/// A running emulator on 127.0.0.1; stops when dropped.
pub struct LambdaEmulator {
    shared: Arc<Shared>,
    server: ServerThread,
}

fn body_json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn epoch_ms(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default()
}

async fn next_invocation(State(state): State<AppState>) -> Response {
    let mut shutdown = state.shutdown.clone();
    let mut queue = state.shared.next.lock().await;
    // Long poll: held open until an invocation is queued, as the real Runtime API does.
    let invocation = tokio::select! {
        inv = queue.recv() => inv,
        _ = shutdown.wait_for(|s| *s) => None,
    };
    let Some(inv) = invocation else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"errorType": "ShuttingDown"}))).into_response();
    };
    let deadline = epoch_ms(SystemTime::now() + INVOCATION_TIMEOUT);
    let trace = format!("Root=1-00000000-{};Parent=0000000000000000;Sampled=0", &inv.id.replace('-', "")[..24]);
    let headers = [
        ("lambda-runtime-aws-request-id", inv.id.clone()),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        ("lambda-runtime-invoked-function-arn", FUNCTION_ARN.to_string()),
        ("lambda-runtime-trace-id", trace),
        ("content-type", "application/json".to_string()),
    ];
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            map.insert(name, value);
        }
    }
    (StatusCode::OK, map, inv.payload.to_string()).into_response()
}

fn record(state: &AppState, id: &str, result: LambdaResult) -> Response {
    let mut outcomes = state.shared.outcomes();
    if !outcomes.pending.remove(id) {
        let error = json!({"errorMessage": format!("unknown or already answered request id {id}"), "errorType": "InvalidRequestID"});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    }
    outcomes.results.insert(id.to_string(), result);
    drop(outcomes);
    state.shared.answered.notify_waiters();
    (StatusCode::ACCEPTED, Json(json!({"status": "OK"}))).into_response()
}

async fn invocation_response(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    record(&state, &id, Ok(body_json(&body)))
}

async fn invocation_error(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    record(&state, &id, Err(body_json(&body)))
}

async fn init_error(State(state): State<AppState>, body: Bytes) -> Response {
    state.shared.outcomes().init_error = Some(body_json(&body));
    state.shared.answered.notify_waiters();
    (StatusCode::ACCEPTED, Json(json!({"status": "OK"}))).into_response()
}

impl LambdaEmulator {
    /// Starts the emulator on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let (queue, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue,
            next: tokio::sync::Mutex::new(receiver),
            outcomes: Mutex::new(Outcomes::default()),
            answered: Notify::new(),
        });
        let app_shared = shared.clone();
        let server = ServerThread::spawn("lambda-emulator", 0, move |shutdown, _| {
            Router::new()
                .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
                .route("/2018-06-01/runtime/invocation/{id}/response", post(invocation_response))
                .route("/2018-06-01/runtime/invocation/{id}/error", post(invocation_error))
                .route("/2018-06-01/runtime/init/error", post(init_error))
                .with_state(AppState { shared: app_shared, shutdown })
        })?;
        Ok(Self { shared, server })
    }

    /// `127.0.0.1:<port>`, the value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.server.addr().to_string()
    }

    /// Queues an invocation; returns its request id.
    pub fn invoke(&self, payload: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.shared.outcomes().pending.insert(id.clone());
        // The receiver lives in `shared` as long as `self`, so the send cannot fail.
        let _ = self.shared.queue.send(Invocation { id: id.clone(), payload });
        id
    }

    /// Waits for the function's answer to an invocation. Fails on timeout, on an unknown id, or when the
    /// function reported an init error.
    pub async fn wait_result(&self, id: &str, timeout: Duration) -> anyhow::Result<LambdaResult> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.answered.notified();
            tokio::pin!(notified);
            // Register before checking, so an answer arriving in between still wakes us.
            notified.as_mut().enable();
            {
                let outcomes = self.shared.outcomes();
                if let Some(result) = outcomes.results.get(id) {
                    return Ok(result.clone());
                }
                if let Some(err) = &outcomes.init_error {
                    bail!("the function reported an init error: {err}");
                }
                if !outcomes.pending.contains(id) {
                    return Err(anyhow!("unknown invocation id {id}"));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("invocation {id} got no answer within {timeout:?}");
            }
        }
    }

    /// [`LambdaEmulator::invoke`] then [`LambdaEmulator::wait_result`].
    pub async fn invoke_and_wait(&self, payload: Value, timeout: Duration) -> anyhow::Result<LambdaResult> {
        let id = self.invoke(payload);
        self.wait_result(&id, timeout).await
    }

    /// The body of `POST /runtime/init/error`, if the function sent one.
    pub fn init_error(&self) -> Option<Value> {
        self.shared.outcomes().init_error.clone()
    }
}
