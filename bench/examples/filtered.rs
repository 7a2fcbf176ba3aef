//! How fast nats-server delivers a backlog to a consumer of one partition (a wildcard filter such as
//! `price.p.0.>`) against one of the whole stream, with and without the pinned-client priority group:
//! the probe behind BENCHMARKS.md's "Partitions on current servers".
//!
//! ```sh
//! nats-server -js -p 14222 &
//! PARTS=2 cargo run --release -p tributary-bench --example filtered -- nats://127.0.0.1:14222 300000 1000 file
//! ```
//! Arguments: the server, messages, distinct keys (instruments), `file` or `memory` storage; `PARTS`
//! partitions (2). It publishes the backlog to a fresh stream `S` (`price.*` stored as
//! `price.p.<n>.<key>`), then acks every message of: the whole stream; partition 0 alone; partitions 0
//! and 1 at once; the same two pinned.
//!
//! `EVERY=1`: after the whole stream, every partition at once instead (then stop). `SOURCED=1`: first
//! also create one stream per partition (`S0`, `S1`, ...) sourcing `price.p.<n>.>` from `S`, and before
//! the rest, ack the whole of every partition stream at once (unfiltered consumers): the fix that
//! needs no server configuration, and what it costs the publisher.

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Acks everything a new durable consumer on `filter` has pending; its rate in messages/s.
async fn consume(js: jetstream::Context, name: &str, filter: &str, pinned: bool) -> f64 {
    consume_from(js, "S", name, filter, pinned).await
}

/// [`consume`] from the stream `stream`.
async fn consume_from(js: jetstream::Context, stream: &str, name: &str, filter: &str, pinned: bool) -> f64 {
    let s = js.get_stream(stream).await.expect("the stream");
    let mut cfg = pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: filter.to_owned(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        max_ack_pending: 20_000,
        ..Default::default()
    };
    if pinned {
        cfg.priority_policy = jetstream::consumer::PriorityPolicy::PinnedClient;
        cfg.priority_groups = vec!["g".into()];
        cfg.priority_timeout = Duration::from_secs(5);
    }
    let mut c = s.create_consumer(cfg).await.expect("a consumer");
    let expect = c.info().await.expect("its info").num_pending;
    let started = Instant::now();
    let builder = c.stream().max_messages_per_batch(8000);
    let builder = match pinned {
        true => builder.group("g").expires(Duration::from_millis(1666)).heartbeat(Duration::from_millis(555)),
        false => builder.heartbeat(Duration::from_secs(5)).expires(Duration::from_secs(30)),
    };
    let mut messages = builder.messages().await.expect("pulling");
    let mut n = 0u64;
    while n < expect {
        match messages.next().await {
            Some(Ok(m)) => {
                m.ack().await.expect("an ack");
                n += 1;
            }
            Some(Err(e)) => eprintln!("{name}: {e}"),
            None => break,
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "{name} ({filter}{}): {n} in {:.2} s = {rate:.0}/s",
        if pinned { ", pinned" } else { "" },
        started.elapsed().as_secs_f64()
    );
    rate
}

/// Acks every partition at once, partition `p` through `consumer(p)` = (stream, durable, filter); their
/// summed rate.
async fn every_partition(
    js: &jetstream::Context,
    parts: u32,
    consumer: impl Fn(u32) -> (String, String, String),
) -> f64 {
    let all = (0..parts).map(|p| {
        let (js, (stream, durable, filter)) = (js.clone(), consumer(p));
        async move { consume_from(js, &stream, &durable, &filter, false).await }
    });
    futures::future::join_all(all).await.into_iter().sum()
}

#[tokio::main]
async fn main() {
    let arg = |i: usize, default: &str| std::env::args().nth(i).unwrap_or_else(|| default.to_owned());
    let (url, n, keys) = (arg(1, "nats://127.0.0.1:14222"), arg(2, "300000"), arg(3, "1000"));
    let (n, keys): (u64, u64) = (n.parse().expect("messages"), keys.parse().expect("keys"));
    let storage = if arg(4, "file") == "memory" { stream::StorageType::Memory } else { stream::StorageType::File };
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "2".into());
    let js = jetstream::new(async_nats::connect(&url).await.expect("connecting"));
    let _ = js.delete_stream("S").await;
    js.create_stream(stream::Config {
        name: "S".into(),
        subjects: vec!["price.>".into()],
        storage,
        subject_transform: Some(stream::SubjectTransform {
            source: "price.*".into(),
            destination: format!("price.p.{{{{partition({parts},1)}}}}.{{{{wildcard(1)}}}}"),
        }),
        ..Default::default()
    })
    .await
    .expect("the stream");
    let sourced = std::env::var("SOURCED").is_ok();
    let parts_n: u32 = parts.parse().expect("PARTS");
    if sourced {
        for p in 0..parts_n {
            let _ = js.delete_stream(format!("S{p}")).await;
            js.create_stream(stream::Config {
                name: format!("S{p}"),
                storage,
                sources: Some(vec![stream::Source {
                    name: "S".into(),
                    filter_subject: Some(format!("price.p.{p}.>")),
                    ..Default::default()
                }]),
                ..Default::default()
            })
            .await
            .expect("a partition stream");
        }
    }
    let published = Instant::now();
    let mut acks = Vec::new();
    for i in 0..n {
        acks.push(js.publish(format!("price.S{}", i % keys), vec![0u8; 56].into()).await.expect("a publish"));
        if acks.len() >= 4096 {
            for a in acks.drain(..) {
                a.await.expect("stored");
            }
        }
    }
    for a in acks {
        a.await.expect("stored");
    }
    eprintln!(
        "{n} messages over {keys} keys, {parts} partitions, {storage:?} storage: published in {:.2} s",
        published.elapsed().as_secs_f64()
    );
    if sourced {
        loop {
            let mut total = 0;
            for p in 0..parts_n {
                total += js
                    .get_stream(format!("S{p}"))
                    .await
                    .expect("a partition")
                    .info()
                    .await
                    .expect("info")
                    .state
                    .messages;
            }
            if total >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("sourced into {parts} streams {:.2} s after the first publish", published.elapsed().as_secs_f64());
        let total = every_partition(&js, parts_n, |p| (format!("S{p}"), format!("s{p}"), String::new())).await;
        eprintln!("all {parts} sourced partition streams at once, unfiltered: {total:.0}/s");
    }
    consume(js.clone(), "all", "price.>", false).await;
    if std::env::var("EVERY").is_ok() {
        let total = every_partition(&js, parts_n, |p| ("S".into(), format!("e{p}"), format!("price.p.{p}.>"))).await;
        eprintln!("all {parts} partitions at once: {total:.0}/s");
        return;
    }
    consume(js.clone(), "p0", "price.p.0.>", false).await;
    let (a, b) =
        tokio::join!(consume(js.clone(), "q0", "price.p.0.>", false), consume(js.clone(), "q1", "price.p.1.>", false));
    eprintln!("two partitions at once: {:.0}/s", a + b);
    let (a, b) =
        tokio::join!(consume(js.clone(), "r0", "price.p.0.>", true), consume(js.clone(), "r1", "price.p.1.>", true));
    eprintln!("two partitions at once, pinned: {:.0}/s", a + b);
}
