//! Key-value buckets kept in JetStream ([`bucket`]): the crash records of the consume loops and the
//! record of replayed dead letters.

use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// Bucket `name`, created if missing with `replicas` (those of the stream it keeps records of: a cluster's
/// node lost took the records of a bucket of one), its entries kept `max_age` (zero: for good). The
/// bucket's stream is made by hand, as a KV bucket is laid out: async-nats 0.51's `create_key_value` cannot
/// read NATS 2.9's answer.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        num_replicas: replicas.max(1),
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(name).await?)
}
