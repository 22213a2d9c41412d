//! The Lambda Runtime API emulator with a real `lambda_runtime` handler.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use coracle_tests::lambda::{LambdaEmulator, FUNCTION_ARN};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn handler(event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    if event.payload["fail"] == true {
        return Err("asked to fail".into());
    }
    Ok(json!({
        "echo": event.payload,
        "requestId": event.context.request_id,
        "arn": event.context.invoked_function_arn,
        "deadlineInFuture": event.context.deadline > 0,
    }))
}

/// The only test in this binary that touches the process environment, which `lambda_runtime` reads.
#[tokio::test]
async fn lambda_runtime_handler_round_trip() -> Result<()> {
    let emulator = LambdaEmulator::start()?;
    // Queued before the runtime polls: handed out on its first `next`.
    let early = emulator.invoke(json!({"n": 1}));
    for (key, value) in [
        ("AWS_LAMBDA_RUNTIME_API", emulator.address()),
        ("AWS_LAMBDA_FUNCTION_NAME", "coracle-test".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "test-stream".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/coracle-test".into()),
    ] {
        std::env::set_var(key, value);
    }
    let runtime = tokio::spawn(lambda_runtime::run(service_fn(handler)));

    let result = async {
        match emulator.wait_result(&early, WAIT).await? {
            Ok(response) => {
                assert_eq!(response["echo"], json!({"n": 1}));
                assert_eq!(response["requestId"], early.as_str());
                assert_eq!(response["arn"], FUNCTION_ARN);
                assert_eq!(response["deadlineInFuture"], true);
            }
            Err(error) => bail!("unexpected function error {error}"),
        }
        // Queued while the runtime's `next` is held open.
        tokio::time::sleep(Duration::from_millis(200)).await;
        match emulator.invoke_and_wait(json!({"fail": true}), WAIT).await? {
            Err(error) => {
                assert!(error["errorMessage"].as_str().is_some_and(|m| m.contains("asked to fail")), "{error}")
            }
            Ok(response) => bail!("expected a function error, got {response}"),
        }
        let again = emulator.invoke_and_wait(json!({"n": 3}), WAIT).await?;
        assert_eq!(again.map_err(|e| anyhow::anyhow!("{e}"))?["echo"]["n"], 3);
        assert!(emulator.wait_result("no-such-id", WAIT).await.is_err());
        assert!(emulator.init_error().is_none());
        Ok(())
    }
    .await;
    runtime.abort();
    result
}

#[tokio::test]
async fn wait_times_out_and_init_errors_are_reported() -> Result<()> {
    let emulator = LambdaEmulator::start()?;
    let id = emulator.invoke(json!({}));
    let timed_out = emulator.wait_result(&id, Duration::from_millis(200)).await;
    assert!(timed_out.is_err_and(|e| e.to_string().contains("no answer")));

    // What a runtime that cannot start sends.
    let body = r#"{"errorType":"Runtime.InitError","errorMessage":"missing config"}"#;
    let mut conn = TcpStream::connect(emulator.address()).context("connecting to the emulator")?;
    write!(
        conn,
        "POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    assert_eq!(emulator.init_error().context("init error recorded")?["errorMessage"], "missing config");
    let failed = emulator.wait_result(&id, WAIT).await;
    assert!(failed.is_err_and(|e| e.to_string().contains("missing config")));
    Ok(())
}

/// A runtime process killed while its `next` was held open must not take the next invocation with it.
#[tokio::test]
async fn a_poller_that_went_away_does_not_swallow_invocations() -> Result<()> {
    let emulator = LambdaEmulator::start()?;
    {
        let mut gone = TcpStream::connect(emulator.address())?;
        write!(gone, "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = emulator.invoke(json!({"n": 1}));
    let mut conn = TcpStream::connect(emulator.address())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).context("reading the invocation")?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.to_ascii_lowercase().contains(&format!("lambda-runtime-aws-request-id: {id}")), "{reply}");
    assert!(reply.ends_with(r#"{"n":1}"#), "{reply}");
    Ok(())
}
