//! Pull rounds: every provider at once, each under its own deadline; concurrent requests share a round
//! that has not asked the providers yet.

use crate::AggregatorConfig;
use crate::provider::{ProviderClient, PullError};
use async_nats::jetstream;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tributary_broker::metric_names as names;
use tributary_broker::publish::{self, Publisher};
use tributary_broker::surveys::SurveyPayload;
use tributary_broker::ts::Ts;
use tributary_broker::{Kind, codec};

/// What one round found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundReport {
    /// The round's number in this aggregator (from 1).
    pub round: u64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// How long it took, in milliseconds.
    pub took_ms: f64,
    /// Each provider's outcome, by name.
    pub providers: Vec<ProviderReport>,
}

/// One provider's outcome in a round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProviderReport {
    /// The provider's name.
    pub provider: String,
    /// `ok`, `timeout`, `unreachable` or `error`.
    pub status: String,
    /// Items published this round.
    pub items: u64,
    /// The highest provider id published so far.
    pub cursor: i64,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Provider {
    name: String,
    client: ProviderClient,
    /// The highest id published and acknowledged by JetStream (so stored, and soon committed).
    cursor: AtomicI64,
    /// The keys of its items without an id that JetStream has stored.
    unkeyed: Mutex<StoredKeys>,
}

/// The most keys of items without an id a provider remembers.
const MAX_UNKEYED: usize = 10_000;

/// The idempotency keys of a provider's items without an id that JetStream has stored, at most
/// [`MAX_UNKEYED`] (the oldest forgotten first). Such an item moves no cursor, so the provider answers it
/// on every page: without these, each pull after the stream's duplicate window stored it, and the
/// processor dead-lettered it, once more, for as long as the provider kept it. Now once per aggregator
/// process (a restart, or another replica, may store it once more).
#[derive(Default)]
struct StoredKeys {
    keys: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl StoredKeys {
    fn insert(&mut self, key: String) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
        }
        if self.order.len() > MAX_UNKEYED
            && let Some(oldest) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
    }
}

impl Provider {
    fn stored_keys(&self) -> std::sync::MutexGuard<'_, StoredKeys> {
        // Nothing panics while holding it; recover the value if something ever did.
        self.unkeyed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

type Pending = watch::Receiver<Option<Arc<RoundReport>>>;
type Reporter = watch::Sender<Option<Arc<RoundReport>>>;

/// The rounds requests can join: the one in flight and, once it has asked the providers, the one after.
#[derive(Default)]
struct Slots {
    /// The round in flight, and whether it has started asking the providers.
    current: Option<(Pending, bool)>,
    /// The round that starts when the current one ends, for the requests that came once it was asking.
    next: Option<(Reporter, Pending)>,
}

/// Runs rounds; [`Rounds::sync`] joins a round that has not yet asked the providers, or the next one.
pub struct Rounds {
    cfg: AggregatorConfig,
    js: jetstream::Context,
    db: tributary_store::sqlx::PgPool,
    providers: Vec<Provider>,
    slots: Mutex<Slots>,
    count: AtomicU64,
    /// Once cancelled, no round starts after the one in flight: its followers are told it was stopped.
    stop: CancellationToken,
}

impl Rounds {
    /// Rounds over `cfg.providers`, publishing to `js`, reading stored cursors from `db`, until `stop`.
    pub fn new(
        cfg: AggregatorConfig,
        js: jetstream::Context,
        db: tributary_store::sqlx::PgPool,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let http =
            reqwest::Client::builder().connect_timeout(Duration::from_millis(cfg.provider_timeout_ms)).build()?;
        let providers = cfg
            .providers
            .iter()
            .map(|(name, url)| Provider {
                name: name.clone(),
                client: ProviderClient::new(url, http.clone()),
                cursor: AtomicI64::new(0),
                unkeyed: Mutex::default(),
            })
            .collect();
        Ok(Rounds { cfg, js, db, providers, slots: Mutex::default(), count: AtomicU64::new(0), stop })
    }

    /// The report of a round that asks every provider after this is called: the round in flight if it
    /// has not asked them yet, else the one after it (shared by every request that comes meanwhile), else
    /// a new one.
    ///
    /// So everything a provider held when this was called is in the report's items. (Joining a round
    /// that had already asked missed what reached a provider in between, for a read that came after it.)
    pub async fn sync(self: &Arc<Self>) -> Arc<RoundReport> {
        let mut rx = {
            let mut slots = self.slots();
            match &*slots {
                Slots { current: Some((rx, false)), .. } => rx.clone(),
                Slots { current: Some(_), next: Some((_, rx)) } => rx.clone(),
                Slots { current: Some(_), next: None } => {
                    let (tx, rx) = watch::channel(None);
                    slots.next = Some((tx, rx.clone()));
                    rx
                }
                Slots { current: None, .. } => {
                    let (tx, rx) = watch::channel(None);
                    self.start(&mut slots, tx, rx.clone());
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(|| Arc::new(self.failed("the round ended without a report"))),
            Err(_) => Arc::new(self.failed("the round was stopped (shutdown)")),
        }
    }

    /// Starts a round unless one is in flight: the interval's rounds, which promise no read anything.
    pub fn tick(self: &Arc<Self>) {
        let mut slots = self.slots();
        if slots.current.is_none() {
            let (tx, rx) = watch::channel(None);
            self.start(&mut slots, tx, rx);
        }
    }

    /// Starts a round reporting to `tx`, as the current one.
    fn start(self: &Arc<Self>, slots: &mut Slots, tx: Reporter, rx: Pending) {
        slots.current = Some((rx, false));
        let me = self.clone();
        tokio::spawn(async move {
            // A round that panics still ends and reports, so the slot never stays taken.
            let report = AssertUnwindSafe(me.round())
                .catch_unwind()
                .await
                .unwrap_or_else(|_| me.failed("the round panicked; see the aggregator's log"));
            {
                let mut slots = me.slots();
                slots.current = None;
                // After shutdown the next round's requests are told it was stopped (its sender dropped).
                if let Some((tx, rx)) = slots.next.take()
                    && !me.stop.is_cancelled()
                {
                    me.start(&mut slots, tx, rx);
                }
            }
            let _ = tx.send(Some(Arc::new(report)));
        });
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Nothing panics while holding it; recover the value if something ever did.
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A report for a round that could not run: every provider `error` with `why`.
    fn failed(&self, why: &str) -> RoundReport {
        RoundReport {
            round: self.rounds(),
            started_at: Ts::new(chrono::Utc::now()).to_string(),
            took_ms: 0.0,
            providers: self
                .providers
                .iter()
                .map(|p| ProviderReport {
                    provider: p.name.clone(),
                    status: "error".into(),
                    items: 0,
                    cursor: p.cursor.load(Ordering::Relaxed),
                    error: Some(why.to_owned()),
                })
                .collect(),
        }
    }

    /// Rounds started so far.
    pub fn rounds(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The current round: marked asking before it asks any provider.
    async fn round(&self) -> RoundReport {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let span = tracing::info_span!("round", round = n, providers = self.providers.len());
        async {
            let started = Instant::now();
            let started_at = Ts::new(chrono::Utc::now()).to_string();
            self.resume_cursors().await;
            if let Some((_, asking)) = &mut self.slots().current {
                *asking = true; // later requests wait for the next round
            }
            let reports = futures::future::join_all(self.providers.iter().map(|p| self.pull(p))).await;
            self.publish_outcomes(&reports).await;
            let took = started.elapsed();
            metrics::counter!(names::AGGREGATOR_ROUNDS).increment(1);
            metrics::histogram!(names::AGGREGATOR_ROUND_SECONDS).record(took.as_secs_f64());
            tracing::debug!(round = n, ?took, "round done");
            RoundReport { round: n, started_at, took_ms: took.as_secs_f64() * 1e3, providers: reports }
        }
        .instrument(span)
        .await
    }

    /// Takes the stored cursors where they are ahead (after a restart, or another replica's pulls),
    /// waiting at most a provider's deadline: PostgreSQL stalled must not stall the round (every later
    /// request waits for it, or for the one after it).
    async fn resume_cursors(&self) {
        let deadline = Duration::from_millis(self.cfg.provider_timeout_ms);
        let rows = match tokio::time::timeout(deadline, tributary_store::surveys::cursors(&self.db)).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read stored cursors; pulling from the ones in memory");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    ?deadline,
                    "no stored cursors within a provider's deadline; pulling from the ones in memory"
                );
                return;
            }
        };
        let rows: HashMap<String, i64> = rows.into_iter().map(|r| (r.provider, r.cursor)).collect();
        for p in &self.providers {
            if let Some(c) = rows.get(&p.name) {
                p.cursor.fetch_max(*c, Ordering::Relaxed);
            }
        }
    }

    async fn pull(&self, p: &Provider) -> ProviderReport {
        let span = tracing::info_span!("pull", otel.kind = "client", provider = %p.name);
        let deadline = Duration::from_millis(self.cfg.provider_timeout_ms);
        let mut items = 0u64;
        let work = async {
            let subject = Kind::Survey.subject(&p.name);
            let mut publisher = Publisher::new(self.js.clone(), 1024);
            loop {
                let after = p.cursor.load(Ordering::Relaxed);
                let page = p.client.page(after, self.cfg.page_size, self.cfg.max_page_bytes).await?;
                let mut unkeyed = Vec::new();
                for item in &page.items {
                    let key = item.msg_id(&p.name);
                    if item.id.is_none() {
                        if p.stored_keys().keys.contains(&key) {
                            continue;
                        }
                        unkeyed.push(key.clone());
                    }
                    let headers = publish::headers(Some(&key), codec::JSON);
                    if let Err(big) = publisher.try_publish_raw(subject.clone(), headers, item.json.clone()).await {
                        // In its place, what the processor dead-letters naming its id and size: else the round
                        // fails on it and the cursor stays below it, for ever. Under a key of its own: should
                        // the item fit later (a larger max_payload) and be pulled again (the cursor stored
                        // below it), it must not be taken for a duplicate of this.
                        tracing::warn!(provider = %p.name, id = item.id, error = %big, "an item larger than NATS takes");
                        let stand_in = publish::headers(Some(&format!("{key}:oversized")), codec::JSON);
                        publisher.publish_raw(subject.clone(), stand_in, item.oversized(big.size)).await;
                    }
                    items += 1;
                }
                publisher.flush().await;
                if let Some((_, why)) = publisher.take_failed().into_iter().next() {
                    return Err(PullError::Publish(why));
                }
                unkeyed.into_iter().for_each(|key| p.stored_keys().insert(key));
                // The end is a page that moves no cursor: empty, or only rows at or below it, or items
                // without a usable id (which come last). A short page is not: a provider that caps its
                // pages below `page_size` ended every round after one page, said `ok`, and a fully synced
                // read missed the rest.
                match page.items.iter().filter_map(|i| i.id).max().filter(|last| *last > after) {
                    Some(last) => {
                        p.cursor.fetch_max(last, Ordering::Relaxed);
                    }
                    // A full page that moves nothing would come back the same (ids that are not whole
                    // numbers, say, or a provider ignoring `after_id`): not the end, and no way past it.
                    None if page.rows >= self.cfg.page_size as usize => {
                        return Err(PullError::BadResponse(format!(
                            "a full page ({} rows after id {after}) has no item with a whole-number id above \
                             it: the provider cannot be read past it",
                            page.rows
                        )));
                    }
                    None => break,
                }
            }
            Ok::<(), PullError>(())
        }
        .instrument(span);
        let outcome = tokio::time::timeout(deadline, work).await;
        let (status, error) = match outcome {
            Ok(Ok(())) => ("ok", None),
            Ok(Err(e)) => (e.status(), Some(e.to_string())),
            Err(_) => ("timeout", Some(format!("no complete answer within {} ms", deadline.as_millis()))),
        };
        if let Some(e) = &error {
            tracing::warn!(provider = %p.name, status, error = %e, "pull failed");
        }
        metrics::counter!(names::AGGREGATOR_PULLS, "provider" => p.name.clone(), "status" => status).increment(1);
        metrics::counter!(names::AGGREGATOR_ITEMS, "provider" => p.name.clone()).increment(items);
        ProviderReport {
            provider: p.name.clone(),
            status: status.to_owned(),
            items,
            cursor: p.cursor.load(Ordering::Relaxed),
            error,
        }
    }

    /// Publishes each provider's outcome after its items, so the stored status never runs ahead of them.
    async fn publish_outcomes(&self, reports: &[ProviderReport]) {
        let at = Ts::new(chrono::Utc::now());
        let mut publisher = Publisher::new(self.js.clone(), reports.len().max(1));
        for r in reports {
            let status = SurveyPayload {
                status: Some(r.status.clone()),
                at: Some(at),
                error: r.error.clone(),
                ..Default::default()
            };
            publisher.publish(Kind::Survey.subject(&r.provider), None, &status).await;
        }
        let done = publisher.finish().await;
        for (subject, why) in done.failed {
            tracing::warn!(subject, error = why, "cannot publish a pull outcome");
        }
    }
}
