//! The read cache of `GET /v1/series/price/{instrument}`: response bodies kept per series until a
//! commit changes the series.
//!
//! The processor notifies [`PRICE_SERIES_CHANNEL`] inside every transaction that writes price points,
//! naming the series it wrote; PostgreSQL delivers a notification only once its transaction has
//! committed. [`SeriesCache::listen`] drops the bodies of the series named. A body read from the
//! database is kept only if no notification about its series arrived after the read began (the
//! [`Ticket`] remembers when), so the cache never holds a body older than a commit it has heard of.
//!
//! - While the listener is not connected, nothing is served from or put into the cache; a lost
//!   connection (notifications may have been missed meanwhile) empties it. A connection can also be
//!   lost silently (a NAT or firewall that forgot it: no error, nothing more heard), so every
//!   `api.series_cache_heartbeat_ms` the listener notifies itself ([`notify::heartbeat`]); if it has
//!   heard nothing at all by the next one, it takes its connection as lost. A cached body is so at most
//!   about two heartbeats older than a commit it missed.
//! - Between a commit and the arrival of its notification (well under a millisecond on one host) a
//!   read may still get the body from before it: the same answer a read that started a moment earlier
//!   would have had. A read that must see a commit asks `?fresh=true`, which bypasses the cache.
//! - Memory is bounded by `api.series_cache_bytes` (bodies and their entries): past it the cache starts
//!   over (a miss costs one query).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sea_orm::sqlx::PgPool;
use sea_orm::sqlx::postgres::{PgListener, PgPoolOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tributary_store::notify;
pub use tributary_store::notify::{ALL_SERIES, PRICE_SERIES_CHANNEL};

/// What a body depends on besides its series: `from`, `to` and `limit`.
pub type Key = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, u64);

/// When a read began, in notifications heard.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// Response bodies by series; cheap to clone (one shared cache).
#[derive(Clone)]
pub struct SeriesCache {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    max_bytes: usize,
    bytes: usize,
    /// Whether the listener is connected: only then is the cache used.
    live: bool,
    /// Counts notifications (and restarts): a read's ticket is the value when it began.
    epoch: u64,
    /// The epoch of the last restart: a read that began before it may not fill.
    cleared_at: u64,
    series: HashMap<String, Slot>,
}

#[derive(Default)]
struct Slot {
    /// The epoch of the last notification about this series.
    changed_at: u64,
    bodies: HashMap<Key, Bytes>,
}

/// What a kept body counts against `max_bytes`: its bytes and its entry.
fn cost(body: &Bytes) -> usize {
    body.len() + std::mem::size_of::<(Key, Bytes)>()
}

/// Series whose slot is kept after a notification (to refuse fills that began before it) are bounded
/// too: past this many the cache starts over.
const MAX_SERIES: usize = 100_000;

impl SeriesCache {
    /// An empty cache holding at most `max_bytes` of bodies; it is used once [`SeriesCache::listen`]
    /// has connected.
    pub fn new(max_bytes: usize) -> Self {
        let inner = Inner { max_bytes, bytes: 0, live: false, epoch: 0, cleared_at: 0, series: HashMap::new() };
        SeriesCache { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached body of `series` for `key`, if any.
    pub fn get(&self, series: &str, key: &Key) -> Option<Bytes> {
        let inner = self.lock();
        if !inner.live {
            return None;
        }
        inner.series.get(series)?.bodies.get(key).cloned()
    }

    /// Taken before a read of the database, for [`SeriesCache::put`]; `None` while the cache is not used.
    pub fn ticket(&self) -> Option<Ticket> {
        let inner = self.lock();
        inner.live.then_some(Ticket(inner.epoch))
    }

    /// Keeps `body`, read after `ticket` was taken, unless `series` changed (or the cache restarted)
    /// since.
    pub fn put(&self, series: &str, key: Key, body: Bytes, ticket: Ticket) {
        let mut inner = self.lock();
        if !inner.live || ticket.0 < inner.cleared_at || cost(&body) > inner.max_bytes {
            return;
        }
        if inner.series.get(series).is_some_and(|s| s.changed_at > ticket.0) {
            return;
        }
        let replacing = inner.series.get(series).and_then(|s| s.bodies.get(&key)).map_or(0, cost);
        if inner.bytes - replacing + cost(&body) > inner.max_bytes || inner.series.len() >= MAX_SERIES {
            inner.restart();
        }
        inner.bytes += cost(&body);
        let replaced = inner.series.entry(series.to_owned()).or_default().bodies.insert(key, body);
        inner.bytes -= replaced.as_ref().map_or(0, cost);
    }

    /// Drops the bodies of `series` (every series for [`ALL_SERIES`]).
    fn changed(&self, series: &str) {
        let mut inner = self.lock();
        if series == ALL_SERIES {
            inner.restart();
            return;
        }
        inner.epoch += 1;
        let epoch = inner.epoch;
        if inner.series.len() >= MAX_SERIES && !inner.series.contains_key(series) {
            inner.restart();
        }
        let slot = inner.series.entry(series.to_owned()).or_default();
        slot.changed_at = epoch;
        let freed: usize = slot.bodies.drain().map(|(_, b)| cost(&b)).sum();
        inner.bytes -= freed;
    }

    fn set_live(&self, live: bool) {
        let mut inner = self.lock();
        inner.restart();
        inner.live = live;
    }

    /// Listens for commits until `stop`, reconnecting after a lost connection (the cache is unused
    /// until it is back); checks the connection every `heartbeat`.
    pub async fn listen(self, pool: PgPool, heartbeat: Duration, stop: CancellationToken) {
        let run = async {
            loop {
                let mut listener = match connect_listener(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "series cache: cannot listen for commits; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                self.set_live(true);
                let heard = AtomicU64::new(0);
                tokio::select! {
                    () = self.follow(&mut listener, &heard) => {}
                    () = heartbeats(&pool, heartbeat, &heard) => {}
                }
                self.set_live(false);
            }
        };
        tokio::select! {
            () = run => {}
            () = stop.cancelled() => {}
        }
        self.set_live(false);
    }
}

impl SeriesCache {
    /// Drops what each notification names until the listener fails, counting what it hears in `heard`.
    async fn follow(&self, listener: &mut PgListener, heard: &AtomicU64) {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    heard.fetch_add(1, Ordering::Relaxed);
                    if n.payload() != notify::HEARTBEAT {
                        n.payload().split('\n').for_each(|s| self.changed(s));
                    }
                }
                // The connection was lost and made again: notifications may have been missed.
                Ok(None) => self.set_live(true),
                Err(e) => {
                    tracing::warn!(error = %e, "series cache: listener failed; reconnecting");
                    return;
                }
            }
        }
    }
}

/// A listener on [`PRICE_SERIES_CHANNEL`], on a pool of its own: a listener dropped after a silent loss
/// closes its connection in the background (`UNLISTEN`, on a socket that may not answer for minutes),
/// which must not hold a connection of the reads' pool meanwhile.
async fn connect_listener(pool: &PgPool) -> Result<PgListener, sea_orm::sqlx::Error> {
    let own = PgPoolOptions::new().max_connections(1).connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(PRICE_SERIES_CHANNEL).await?;
    Ok(listener)
}

/// Notifies [`notify::HEARTBEAT`] every `every`; returns once a whole interval after one was sent passed
/// with nothing `heard` at all (not even it): the listener's connection is lost.
async fn heartbeats(pool: &PgPool, every: Duration, heard: &AtomicU64) {
    // What had been heard when the last heartbeat was sent, if it was.
    let mut sent: Option<u64> = None;
    loop {
        tokio::time::sleep(every).await;
        if sent.is_some_and(|before| heard.load(Ordering::Relaxed) == before) {
            tracing::warn!(
                ?every,
                "series cache: its listener heard nothing, not even its own heartbeat; reconnecting"
            );
            return;
        }
        let before = heard.load(Ordering::Relaxed);
        sent = match tokio::time::timeout(every, notify::heartbeat(pool)).await {
            Ok(Ok(())) => Some(before),
            // PostgreSQL unreachable: nothing commits either, so nothing can be missed.
            _ => None,
        };
    }
}

impl Inner {
    /// Drops every body and refuses fills by reads that began before now.
    fn restart(&mut self) {
        self.epoch += 1;
        self.cleared_at = self.epoch;
        self.series.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(max: usize) -> SeriesCache {
        let c = SeriesCache::new(max);
        c.set_live(true);
        c
    }

    const K: Key = (None, None, 100);

    #[test]
    fn serves_what_it_kept_until_the_series_changes() {
        let c = live(1 << 20);
        let t = c.ticket().unwrap();
        c.put("A", K, Bytes::from_static(b"a1"), t);
        c.put("B", K, Bytes::from_static(b"b1"), t);
        assert_eq!(c.get("A", &K).as_deref(), Some(&b"a1"[..]));
        assert_eq!(c.get("A", &(None, None, 5)), None);
        c.changed("A");
        assert_eq!(c.get("A", &K), None);
        assert_eq!(c.get("B", &K).as_deref(), Some(&b"b1"[..]));
        c.changed(ALL_SERIES);
        assert_eq!(c.get("B", &K), None);
    }

    /// A body kept again for the same key replaces the old one in the count too: the count grew by each
    /// replacement, and the cache started over (dropping every series) long before it was full.
    #[test]
    fn a_replaced_body_is_counted_once() {
        let body = Bytes::from(vec![b'x'; 100]);
        let c = live(4 * cost(&body));
        let t = c.ticket().unwrap();
        c.put("A", K, body.clone(), t);
        for _ in 0..10 {
            c.put("B", K, body.clone(), t);
        }
        assert_eq!(c.get("A", &K).as_deref(), Some(&body[..]), "A is still kept");
        assert_eq!(c.lock().bytes, 2 * cost(&body));
    }

    #[test]
    fn a_read_that_began_before_a_change_is_not_kept() {
        let c = live(1 << 20);
        let before = c.ticket().unwrap();
        c.changed("A");
        c.put("A", K, Bytes::from_static(b"old"), before);
        assert_eq!(c.get("A", &K), None);
        // Another series' change does not refuse it; a read after the change is kept.
        let after = c.ticket().unwrap();
        c.changed("B");
        c.put("A", K, Bytes::from_static(b"new"), after);
        assert_eq!(c.get("A", &K).as_deref(), Some(&b"new"[..]));
        // A restart (lost connection, memory bound) refuses every read that began before it.
        let t = c.ticket().unwrap();
        c.set_live(true);
        c.put("C", K, Bytes::from_static(b"c"), t);
        assert_eq!(c.get("C", &K), None);
    }

    #[test]
    fn unused_while_not_listening_and_bounded_in_bytes() {
        let body = Bytes::from_static(b"123456");
        let max = cost(&body) + 4;
        let c = SeriesCache::new(max);
        assert!(c.ticket().is_none());
        let c = live(max);
        let t = c.ticket().unwrap();
        c.put("A", K, body.clone(), t);
        c.put("B", K, body.clone(), t);
        // Over the bound: started over, so only what came after holds.
        assert_eq!(c.get("A", &K), None);
        assert_eq!(c.lock().bytes, cost(&body));
        c.set_live(false);
        assert_eq!(c.get("B", &K), None);
    }
}
