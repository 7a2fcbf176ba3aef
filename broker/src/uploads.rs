//! The upload contract: the messages of an upload carry [`HEADER`] (set by the API's upload route and the
//! importers), and the processors report how many of them each commit (or stored dead letter) covered on
//! core NATS `tributary.upload.<id>` ([`PROGRESS_PREFIX`]), which the API follows for the upload's status.

use async_nats::HeaderMap;
use std::collections::BTreeMap;

/// The header naming the upload a message came from.
pub const HEADER: &str = "Tributary-Upload";
/// Core NATS subjects `tributary.upload.<id>`: after a commit (or a stored dead letter), how many of an
/// upload's messages it covered, as JSON `{"committed": n}` or `{"dead_letters": n}`.
pub const PROGRESS_PREFIX: &str = "tributary.upload";

/// How many of `headers` belong to each upload.
pub fn count<'a>(headers: impl IntoIterator<Item = Option<&'a HeaderMap>>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for h in headers {
        if let Some(id) = h.and_then(|h| h.get(HEADER)) {
            *counts.entry(id.as_str().to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Tells each upload's watchers how many of its messages were just `what` (`committed` or
/// `dead_letters`). Progress, not an audit: a failed report is logged and dropped.
pub async fn report(client: &async_nats::Client, what: &str, counts: BTreeMap<String, u64>) {
    for (id, n) in counts {
        let body = format!("{{\"{what}\":{n}}}");
        if let Err(e) = client.publish(format!("{PROGRESS_PREFIX}.{id}"), body.into()).await {
            tracing::debug!(error = %e, "cannot report upload progress");
        }
    }
}
