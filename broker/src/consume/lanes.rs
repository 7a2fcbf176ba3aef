//! The per-series scheduler of one consumer ([`Lanes`]): which fetched messages wait, which go into the
//! next unit of work, and what happens to each message once its unit is done.

use super::crashes::{CrashLog, Stops};
use super::unit::{Done, Health, Item, Outcome, Unit};
use super::{BatchHandler, ConsumerSpec, Delivery, PROCESSING_FAILED, Settled, backoff, dead_letter, panic_text};
use crate::events::Rejection;
use crate::metric_names as names;
use crate::ts::Ts;
use async_nats::jetstream::{self, AckKind, Message};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

/// A valid message with its decoded event.
type Entry<E> = (Item, Delivery<E>);

/// The per-series scheduler of one consumer: the items waiting (per busy series, or ready), the units in
/// flight, and the series they hold.
pub(super) struct Lanes<H: BatchHandler> {
    js: jetstream::Context,
    spec: Arc<ConsumerSpec>,
    handler: H,
    /// Items whose series is free, in arrival order.
    ready: VecDeque<Entry<H::Event>>,
    /// Suspects whose series is free: they go in units of suspects only ([`super::crashes`]).
    suspects: VecDeque<Entry<H::Event>>,
    /// Items whose series is in flight, waiting for it.
    blocked: HashMap<u64, Vec<Entry<H::Event>>>,
    busy: HashSet<u64>,
    /// The sequences of the messages waiting here or in a unit. JetStream delivers one again once it has
    /// waited `ack_wait` (those behind a busy series get no in-progress acks), and that copy is dropped:
    /// the one held is acked or nak'ed in its turn (an ack of an earlier delivery acks the message).
    /// Each copy used to be queued too, so a long unit piled up a copy of every message behind it each
    /// `ack_wait`, and each was stored again once the series was free.
    held: HashSet<u64>,
    pub(super) tasks: JoinSet<Done>,
    crashes: Option<CrashLog>,
    /// When to try opening the crash records again, when they could not be opened.
    crashes_retry: tokio::time::Instant,
    /// Whether a unit of suspects is in flight.
    suspect_in_flight: bool,
    /// Sequences this process nak'ed: their redelivery is explained, not a suspect's.
    nakked: HashSet<u64>,
    /// The last stream sequence delivered before this loop reset the consumer ([`super::reclaim`]):
    /// messages up to it come again with a delivery count of 1, and are suspects all the same.
    given_back_through: u64,
    /// What this consumer's units did: whether a failure alone is its message's own.
    health: Arc<Health>,
    pub(super) paused_until: Option<tokio::time::Instant>,
    failing: bool,
    /// This consumer's key in [`super::failing`]: (NATS server id, durable name).
    failing_key: (String, String),
}

impl<H: BatchHandler> Drop for Lanes<H> {
    fn drop(&mut self) {
        super::FAILING.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.failing_key);
        // The loop has ended: it no longer fails (as `/readyz` no longer reports it).
        if self.failing {
            metrics::gauge!(names::CONSUMER_FAILING, "consumer" => self.spec.label).set(0.0);
        }
    }
}

/// How often a loop without crash records tries to open them again, as suspects come.
const CRASH_LOG_RETRY: Duration = Duration::from_secs(10);

/// The most sequences remembered as nak'ed; past it the set starts over (a forgotten one is a suspect
/// once, which costs time, not messages).
const NAKKED_MAX: usize = 200_000;

impl<H: BatchHandler> Lanes<H> {
    pub(super) async fn new(js: &jetstream::Context, spec: &ConsumerSpec, handler: H) -> Self {
        Lanes {
            js: js.clone(),
            spec: Arc::new(spec.clone()),
            handler,
            ready: VecDeque::new(),
            suspects: VecDeque::new(),
            blocked: HashMap::new(),
            busy: HashSet::new(),
            held: HashSet::new(),
            tasks: JoinSet::new(),
            crashes: CrashLog::open(js, &spec.stream, &spec.durable).await,
            crashes_retry: tokio::time::Instant::now(),
            suspect_in_flight: false,
            nakked: HashSet::new(),
            given_back_through: 0,
            health: Arc::default(),
            paused_until: None,
            failing: false,
            failing_key: (js.client().server_info().server_id, spec.durable.clone()),
        }
    }

    /// Whether no message is held here, waiting or in a unit.
    pub(super) fn holds_nothing(&self) -> bool {
        self.held.is_empty() && self.tasks.is_empty()
    }

    /// The consumer was reset ([`super::reclaim`]): every message up to stream sequence `through` had
    /// been delivered before.
    pub(super) fn given_back_through(&mut self, through: u64) {
        self.given_back_through = self.given_back_through.max(through);
    }

    /// How many items are ready to launch: fetching pauses at a batch of them. Items waiting on a busy
    /// series do not count, so a slow series' own backlog never stops the others being fetched; they are
    /// bounded by the consumer's `max_ack_pending` (and come again, harmlessly, if they wait past
    /// `ack_wait`).
    pub(super) fn waiting(&self) -> usize {
        self.ready.len() + self.suspects.len()
    }

    /// Decodes a fetched chunk: refused messages are dead-lettered, valid ones wait for their series.
    pub(super) async fn accept(&mut self, batch: Vec<Message>) {
        let spec = Arc::clone(&self.spec);
        let spec = &*spec;
        let mut dead = Vec::new();
        let mut valid = Vec::with_capacity(batch.len());
        let mut pending = 0;
        let size = batch.len();
        for m in batch {
            let Ok(info) = m.info() else {
                warn!(consumer = spec.durable, subject = %m.subject, "message without JetStream metadata; leaving it to redelivery");
                continue;
            };
            let (seq, received, delivered) = (info.stream_sequence, Ts::new(info.published), info.delivered);
            pending = info.pending;
            if self.held.contains(&seq) {
                debug!(consumer = spec.durable, seq, delivered, "a copy of a message held here: dropped");
                continue;
            }
            // A decoder that panics refuses the message, as any other decoding failure: unwinding out of
            // here ended the consume loop, the process stopped, and the message came back to stop the next
            // one, for ever.
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.handler.decode(&m.subject, m.headers.as_ref(), &m.payload, received)
            }))
            .unwrap_or_else(|panic| {
                Err(Rejection {
                    class: "undecodable",
                    reason: format!("the decoder panicked: {}", panic_text(&*panic)),
                })
            });
            match decoded {
                Ok(event) => {
                    // A redelivery this process did not ask for may have been in flight when one died.
                    let again = delivered > 1 || seq <= self.given_back_through;
                    let suspect = (again && !self.nakked.remove(&seq)).then(Stops::default);
                    let item = Item {
                        parent: crate::trace::extract(m.headers.as_ref()),
                        series: series_of(&m.subject),
                        seq,
                        received,
                        delivered,
                        message: Box::new(m),
                        suspect,
                    };
                    valid.push((item, Delivery { event, seq, received }));
                }
                Err(rejection) => dead.push((m, seq, rejection.class, rejection.reason)),
            }
        }
        // Crash records the loop could not open when it started (NATS restarting, say) are tried again
        // when a suspect needs them, at most every CRASH_LOG_RETRY: opened once only, they were missing for
        // the loop's whole life, and a message that kills the process was never dead-lettered.
        if self.crashes.is_none()
            && valid.iter().any(|(i, _)| i.suspect.is_some())
            && tokio::time::Instant::now() >= self.crashes_retry
        {
            self.crashes = CrashLog::open(&self.js, &spec.stream, &spec.durable).await;
            self.crashes_retry = tokio::time::Instant::now() + CRASH_LOG_RETRY;
        }
        if let Some(log) = &self.crashes {
            let (at, seqs): (Vec<usize>, Vec<u64>) = valid
                .iter()
                .enumerate()
                .filter(|(_, (i, _))| i.suspect.is_some())
                .map(|(k, (i, _))| (k, i.seq))
                .unzip();
            if !seqs.is_empty() {
                for (k, stops) in at.into_iter().zip(log.read(&seqs).await) {
                    valid[k].0.suspect = Some(stops);
                }
            }
        }
        let mut stopped = Vec::new();
        for (item, delivery) in valid {
            match item.suspect {
                Some(s) if s.alone >= spec.max_failures => {
                    let reason = format!(
                        "the processor stopped {} times while storing this message alone ({} stops in all): it \
                         crashes, is killed (out of memory?) or hangs past the shutdown grace on it",
                        s.alone, s.all
                    );
                    warn!(consumer = spec.durable, seq = item.seq, reason, "dead-lettering");
                    stopped.push(item.seq);
                    dead.push((*item.message, item.seq, PROCESSING_FAILED, reason));
                }
                _ => self.queue(item, delivery),
            }
        }
        metrics::gauge!(names::CONSUMER_PENDING, "consumer" => spec.label).set(pending as f64);
        metrics::histogram!(names::BATCH_SIZE, "consumer" => spec.label).record(size as f64);
        let retry = if dead.is_empty() { None } else { dead_letter(&self.js, spec, dead).await };
        match (retry, &self.crashes) {
            (Some(delay), _) => self.pause(delay),
            // Their dead letters are stored: their records are done with.
            (None, Some(log)) if !stopped.is_empty() => log.finished(&stopped).await,
            _ => {}
        }
    }

    /// Queues an item: behind its series if that is busy, else with the ready items or suspects.
    fn queue(&mut self, item: Item, delivery: Delivery<H::Event>) {
        self.held.insert(item.seq);
        if self.busy.contains(&item.series) {
            self.blocked.entry(item.series).or_default().push((item, delivery));
        } else if item.suspect.is_some() {
            self.suspects.push_back((item, delivery));
        } else {
            self.ready.push_back((item, delivery));
        }
    }

    fn pause(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Starts units of work while a lane is free and items are ready (and no backoff is in force): a unit
    /// of suspects first, sized by their stops ([`Stops::unit_size`]), else up to `batch` ready items.
    /// The items' series become busy.
    pub(super) fn launch(&mut self) {
        if self.paused_until.is_some_and(|t| t > tokio::time::Instant::now()) {
            return;
        }
        let batch = self.spec.batch.max(1);
        while self.tasks.len() < self.spec.lanes.max(2) {
            let mut unit = None;
            // One unit of suspects at a time: a process that dies then blames only that unit's
            // messages, never a suspect in another lane.
            if !self.suspect_in_flight
                && let Some((first, _)) = self.suspects.front()
            {
                let size = first.suspect.unwrap_or_default().unit_size(batch);
                unit = Some(self.take(true, size)).filter(|(items, _)| !items.is_empty());
                self.suspect_in_flight = unit.is_some();
            }
            if unit.is_none() && !self.ready.is_empty() {
                unit = Some(self.take(false, batch)).filter(|(items, _)| !items.is_empty());
            }
            let Some((items, deliveries)) = unit else { break };
            self.busy.extend(items.iter().map(|i| i.series));
            let crashes = self.crashes.clone().filter(|_| items[0].suspect.is_some());
            let unit =
                Unit { handler: self.handler.clone(), spec: self.spec.clone(), health: self.health.clone(), crashes };
            self.tasks.spawn(unit.run(items, deliveries));
        }
    }

    /// Takes up to `size` items from the front of the suspects or of the ready items. One whose series
    /// became busy since it was queued (a unit launched after it arrived) waits behind that unit
    /// instead: two units in flight never share a series, so they never wait on each other's locks.
    fn take(&mut self, suspects: bool, size: usize) -> (Vec<Item>, Vec<Delivery<H::Event>>) {
        let queue = if suspects { &mut self.suspects } else { &mut self.ready };
        let (mut items, mut deliveries) = (Vec::new(), Vec::new());
        while items.len() < size
            && let Some((item, delivery)) = queue.pop_front()
        {
            if self.busy.contains(&item.series) {
                self.blocked.entry(item.series).or_default().push((item, delivery));
            } else {
                items.push(item);
                deliveries.push(delivery);
            }
        }
        (items, deliveries)
    }

    /// Acks, naks or dead-letters a finished unit's messages and frees its series.
    pub(super) async fn finish(&mut self, done: Result<Done, tokio::task::JoinError>) {
        let spec = Arc::clone(&self.spec);
        let spec = &*spec;
        let done = match done {
            Ok(d) => d,
            // A unit catches its handler's panics; this is a bug in the loop itself. Its messages were
            // not acked, so they come again; their series stay busy no longer than this process.
            Err(e) => {
                error!(consumer = spec.durable, error = %e, "a unit of work was lost; its messages will be redelivered");
                // Which series and messages it held are lost with it: free them all rather than hold any
                // forever (a message still waiting here is held still).
                self.busy.clear();
                self.suspect_in_flight = false;
                self.release_blocked();
                let waiting = self.ready.iter().chain(&self.suspects).map(|(i, _)| i.seq);
                self.held = waiting.collect();
                return;
            }
        };
        if done.items.first().is_some_and(|(i, _)| i.suspect.is_some()) {
            self.suspect_in_flight = false;
        }
        let label = spec.label;
        let now = chrono::Utc::now();
        let latency = metrics::histogram!(names::COMMIT_LATENCY, "consumer" => label);
        let (mut committed, mut failed) = (Vec::new(), Vec::new());
        let mut retried = 0u64;
        let acking = std::time::Instant::now();
        for (item, outcome) in done.items {
            self.busy.remove(&item.series);
            self.held.remove(&item.seq);
            match outcome {
                Outcome::Committed => {
                    latency.record((now - item.received.0).num_microseconds().unwrap_or(0) as f64 / 1e6);
                    if let Err(e) = item.message.ack().await {
                        // The commit stands; the message will be redelivered and change nothing.
                        debug!(error = %e, "ack failed");
                    }
                    committed.push(item.message);
                }
                Outcome::Retry => {
                    retried += 1;
                    if self.nakked.len() >= NAKKED_MAX {
                        self.nakked.clear();
                    }
                    self.nakked.insert(item.seq);
                    let _ = item.message.ack_with(AckKind::Nak(Some(backoff(item.delivered)))).await;
                }
                Outcome::Failed(reason) => failed.push((*item.message, item.seq, PROCESSING_FAILED, reason)),
            }
        }
        if !committed.is_empty() {
            metrics::histogram!(names::PHASE_SECONDS, "consumer" => label, "phase" => "ack")
                .record(acking.elapsed().as_secs_f64());
            metrics::counter!(names::EVENTS, "consumer" => label, "outcome" => "processed")
                .increment(committed.len() as u64);
            if let Some(hook) = &spec.settled {
                (hook.0)(Settled::Committed, &committed.iter().map(AsRef::as_ref).collect::<Vec<_>>());
            }
        }
        if retried > 0 {
            metrics::counter!(names::BATCH_FAILURES, "consumer" => label).increment(1);
        }
        if !failed.is_empty()
            && let Some(delay) = dead_letter(&self.js, spec, failed).await
        {
            self.pause(delay);
        }
        match (&done.systemic, self.failing, committed.is_empty()) {
            (Some(e), _, _) => {
                if !self.failing {
                    error!(consumer = spec.durable, error = %e, "every message fails: keeping them and backing off");
                }
                self.failing = true;
                super::FAILING.lock().unwrap_or_else(|e| e.into_inner()).insert(self.failing_key.clone(), e.clone());
            }
            (None, true, false) => {
                info!(consumer = spec.durable, "commits succeed again");
                self.failing = false;
                super::FAILING.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.failing_key);
            }
            _ => {}
        }
        metrics::gauge!(names::CONSUMER_FAILING, "consumer" => label).set(if self.failing { 1.0 } else { 0.0 });
        if let Some(delay) = done.pause {
            self.pause(delay);
        }
        self.release_blocked();
    }

    /// Naks every message still waiting (the loop is stopping), so that whichever process consumes next
    /// has them at once instead of after `ack_wait`.
    pub(super) async fn give_back(&mut self) {
        let blocked = self.blocked.drain().flat_map(|(_, items)| items);
        let waiting: Vec<Entry<H::Event>> =
            self.ready.drain(..).chain(self.suspects.drain(..)).chain(blocked).collect();
        if waiting.is_empty() {
            return;
        }
        debug!(consumer = self.spec.durable, messages = waiting.len(), "giving back what waits");
        for (item, _) in waiting {
            self.held.remove(&item.seq);
            let _ = item.message.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// The freed series' waiting items are ready again, ahead of items that arrived after them.
    fn release_blocked(&mut self) {
        let freed: Vec<u64> = self.blocked.keys().copied().filter(|s| !self.busy.contains(s)).collect();
        for s in freed {
            let items = self.blocked.remove(&s).unwrap_or_default();
            for item in items.into_iter().rev() {
                if item.0.suspect.is_some() {
                    self.suspects.push_front(item);
                } else {
                    self.ready.push_front(item);
                }
            }
        }
    }
}

/// A series is a subject: the unit of ordering and of isolation.
fn series_of(subject: &str) -> u64 {
    crate::hash::fnv1a(&[subject.as_bytes()])
}
