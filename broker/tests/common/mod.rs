//! What the consume-loop tests share: a scripted handler, a private nats-server with a stream, a consumer
//! spec, and waiting for a condition. (Each test file uses only part of it.)
#![allow(dead_code)]

use async_nats::jetstream::{self, stream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tributary_broker::consume::{BatchHandler, ConsumerSpec, Delivery, HandleError};
use tributary_broker::{Rejection, ts::Ts};
use tributary_testkit::NatsServer;

/// How the scripted handler treats a message on a given attempt.
#[derive(Clone, Copy, PartialEq)]
pub enum Act {
    Commit,
    Fail,
    Transient,
    Lasting,
    Panic,
    Sleep(Duration),
}

/// A handler whose every message's fate is scripted by its payload and how often it was tried; it
/// records what it committed. A batch fails (or panics) if any of its messages does.
#[derive(Clone)]
pub struct Scripted {
    script: Arc<dyn Fn(&str, usize) -> Act + Send + Sync>,
    /// How often each stream sequence was tried.
    pub tries: Arc<Mutex<std::collections::HashMap<u64, usize>>>,
    committed: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Scripted {
    pub fn new(script: impl Fn(&str, usize) -> Act + Send + Sync + 'static) -> Self {
        Scripted { script: Arc::new(script), tries: Arc::default(), committed: Arc::default() }
    }

    pub fn committed(&self) -> Vec<String> {
        self.committed.lock().unwrap().iter().map(|c| c.0.clone()).collect()
    }
}

impl BatchHandler for Scripted {
    type Event = String;

    fn decode(&self, _: &str, _: Option<&async_nats::HeaderMap>, payload: &[u8], _: Ts) -> Result<String, Rejection> {
        Ok(String::from_utf8_lossy(payload).into_owned())
    }

    async fn handle(&self, batch: &[Delivery<String>]) -> Result<(), HandleError> {
        let acts: Vec<Act> = {
            let mut tries = self.tries.lock().unwrap();
            batch
                .iter()
                .map(|d| {
                    let n = tries.entry(d.seq).or_default();
                    *n += 1;
                    (self.script)(&d.event, *n)
                })
                .collect()
        };
        for act in &acts {
            match act {
                Act::Panic => panic!("scripted panic"),
                Act::Fail => return Err(HandleError(anyhow::anyhow!("scripted failure"))),
                Act::Transient => return Err(HandleError(anyhow::anyhow!("transient: database restarting"))),
                Act::Lasting => return Err(HandleError(anyhow::anyhow!("lasting: configured otherwise"))),
                Act::Sleep(d) => tokio::time::sleep(*d).await,
                Act::Commit => {}
            }
        }
        let now = Instant::now();
        self.committed.lock().unwrap().extend(batch.iter().map(|d| (d.event.clone(), now)));
        Ok(())
    }
}

/// A private nats-server with a stream `T` on `t.>` and the dead-letter stream, and `payloads` published
/// on `t.<payload>`.
pub async fn setup(payloads: &[String]) -> (NatsServer, jetstream::Context) {
    setup_capped(payloads, None).await
}

/// [`setup`], with a client that lets at most `cap` publishes await their ack at once (a publish past
/// it waits), when given; async-nats's default is 5,000, shared by everything using the client.
pub async fn setup_capped(payloads: &[String], cap: Option<usize>) -> (NatsServer, jetstream::Context) {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = match cap {
        Some(cap) => jetstream::ContextBuilder::new().max_ack_inflight(cap).build(client),
        None => jetstream::new(client),
    };
    js.create_stream(stream::Config { name: "T".into(), subjects: vec!["t.>".into()], ..Default::default() })
        .await
        .unwrap();
    js.create_stream(stream::Config { name: "DLQ".into(), subjects: vec!["dlq.>".into()], ..Default::default() })
        .await
        .unwrap();
    for p in payloads {
        js.publish(format!("t.{p}"), p.clone().into()).await.unwrap().await.unwrap();
    }
    (nats, js)
}

pub fn spec() -> ConsumerSpec {
    ConsumerSpec {
        stream: "T".into(),
        durable: "t".into(),
        filter_subject: "t.>".into(),
        batch: 100,
        ack_wait: Duration::from_secs(5),
        max_ack_pending: 1000,
        label: "t",
        max_failures: 3,
        lanes: 3,
        transient: |e| e.to_string().starts_with("transient"),
        lasting: |e| e.to_string().starts_with("lasting"),
        own: |_| false,
        settled: None,
        pinned: None,
    }
}

/// Waits until `done` holds, for at most 30 s.
pub async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (subject, class, reason) of every dead letter stored.
pub async fn dead_letters(js: &jetstream::Context) -> Vec<(String, String, String)> {
    let stream = js.get_stream("DLQ").await.unwrap();
    let n = stream.get_info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=n {
        let m = stream.get_raw_message(seq).await.unwrap();
        let h = |k: &str| m.headers.get(k).map(|v| v.as_str().to_owned()).unwrap_or_default();
        out.push((
            h(tributary_broker::dlq::SUBJECT),
            h(tributary_broker::dlq::CLASS),
            h(tributary_broker::dlq::REASON),
        ));
    }
    out
}

/// The ack floor (a stream sequence) of consumer `t`, 0 before it exists.
pub async fn ack_floor(js: &jetstream::Context) -> u64 {
    js.get_stream("T").await.unwrap().consumer_info("t").await.map_or(0, |i| i.ack_floor.stream_sequence)
}

/// `m0`, `m1`, … `m<n-1>`.
pub fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}
