//! The test nats-server: JetStream works, a restart keeps the URL and the stream's data, drop kills it.

use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream;
use coracle_tests::nats::{tools_bin, tools_path, NatsServer};
use coracle_tests::process::pid_alive;

async fn connect(url: &str) -> Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
    options.connect(url).await.with_context(|| format!("connecting to {url}"))
}

#[tokio::test]
async fn jetstream_data_survives_a_restart_and_drop_kills_the_server() -> Result<()> {
    let mut nats = NatsServer::start()?;
    let url = nats.url();
    let first_pid = nats.pid().context("running")?;
    assert!(pid_alive(first_pid));

    let js = jetstream::new(connect(&url).await?);
    js.create_stream(jetstream::stream::Config {
        name: "SIMTEST".into(),
        subjects: vec!["simtest.>".into()],
        ..Default::default()
    })
    .await?;
    let ack = js.publish("simtest.a", "hello".into()).await?.await?;
    assert_eq!(ack.sequence, 1);

    nats.restart()?;
    assert_eq!(nats.url(), url);
    let second_pid = nats.pid().context("running again")?;
    assert_ne!(second_pid, first_pid);
    assert!(!pid_alive(first_pid), "the first nats-server ({first_pid}) is gone");

    let js = jetstream::new(connect(&url).await?);
    let mut stream = js.get_stream("SIMTEST").await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    let kept = stream.get_last_raw_message_by_subject("simtest.a").await?;
    assert_eq!(kept.payload.as_ref(), b"hello");
    let ack = js.publish("simtest.b", "after restart".into()).await?.await?;
    assert_eq!(ack.sequence, 2);

    // A crash (SIGKILL) and a start again keep the data as well.
    nats.kill();
    assert!(nats.pid().is_none());
    assert!(!pid_alive(second_pid));
    nats.start_again()?;
    let mut stream = jetstream::new(connect(&url).await?).get_stream("SIMTEST").await?;
    assert_eq!(stream.info().await?.state.messages, 2);

    let last_pid = nats.pid().context("running")?;
    let store = nats.store_dir();
    drop(nats);
    assert!(!pid_alive(last_pid), "drop killed nats-server {last_pid}");
    assert!(!store.exists(), "the store directory is removed with the server");
    Ok(())
}

#[test]
fn two_servers_run_side_by_side() -> Result<()> {
    let a = NatsServer::start()?;
    let b = NatsServer::start()?;
    assert_ne!(a.url(), b.url());
    assert_ne!(a.store_dir(), b.store_dir());
    let pids = [a.pid().context("a")?, b.pid().context("b")?];
    drop(a);
    drop(b);
    assert!(pids.iter().all(|p| !pid_alive(*p)));
    assert!(tools_path().starts_with(tools_bin().to_str().context("utf-8")?));
    Ok(())
}
