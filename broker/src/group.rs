//! The processor group's shared state: which processor processes are alive, which partitions each owns,
//! and how far behind each partition is. Written by the processors, read by them and by the API.
//!
//! Each process keeps one record ([`Member`]) under its own key in the KV bucket [`BUCKET`]
//! (`<group>.<member id>`, the group being the processors' durable prefix, so that groups on one server
//! never mix) and writes it again every heartbeat; the bucket forgets a record `ttl` (given to
//! [`Group::join`]) after its last write, so a process that dies leaves the group by itself, with no one
//! to tell. Every process computes the same assignment
//! from the same members ([`assign`]). Each partition's durable consumer pulls in the priority group
//! [`PRIORITY_GROUP`] with the `pinned_client` policy: the server delivers a partition to one pull client
//! at a time, which fences two processes that disagree about the members for a moment.

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The KV bucket of the processors' records.
pub const BUCKET: &str = "TRIBUTARY_PROCESSORS";

/// The priority group every partition consumer pulls in.
pub const PRIORITY_GROUP: &str = "processors";

/// One processor process, as it describes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    /// Its key: `<start, ms since the epoch, 13 digits>-<host>-<pid>-<n>` (n counts the members this
    /// process started), so members sort by when they joined.
    pub id: String,
    /// The host (or pod) it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The durable consumers (partitions) it consumes now.
    pub owns: Vec<String>,
    /// The kinds whose partitions it takes none of now (`price`: its derived windows are not the ones in
    /// force). Absent from the records of processors older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aside: Vec<String>,
}

impl Member {
    /// This process, joining now.
    pub fn this_process() -> Member {
        let host = hostname();
        let pid = std::process::id();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let safe: String =
            host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Member { id: format!("{started:013}-{safe}-{pid}-{n}"), host, pid, owns: Vec::new(), aside: Vec::new() }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Which member consumes each unit, given as (name, kind): unit `i` (in the order given) goes to member
/// `i mod M`, members in the order they joined. A unit whose member stands aside from its kind
/// ([`Member::aside`]) goes to the members that do not, dealt round in the same way; a unit of a kind every
/// member stands aside from goes to none. Every process computes the same answer from the same members;
/// a member that joins last takes units from the others, and one that leaves hands its units round.
pub fn assign<'a>(members: &'a [Member], units: &[(String, &str)]) -> Vec<(String, &'a Member)> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    if sorted.is_empty() {
        return Vec::new();
    }
    let takes = |m: &Member, kind: &str| !m.aside.iter().any(|k| k == kind);
    let mut redealt: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut owners = Vec::with_capacity(units.len());
    for (i, (unit, kind)) in units.iter().enumerate() {
        let first = sorted[i % sorted.len()];
        if takes(first, kind) {
            owners.push((unit.clone(), first));
            continue;
        }
        let willing: Vec<&Member> = sorted.iter().copied().filter(|m| takes(m, kind)).collect();
        if willing.is_empty() {
            continue;
        }
        let turn = redealt.entry(kind).or_default();
        owners.push((unit.clone(), willing[*turn % willing.len()]));
        *turn += 1;
    }
    owners
}

/// The group's records.
#[derive(Clone)]
pub struct Group {
    store: kv::Store,
    name: String,
}

/// The group's bucket could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("processor group ({BUCKET}): {0}")]
pub struct GroupError(String);

fn err(e: impl std::fmt::Display) -> GroupError {
    GroupError(e.to_string())
}

impl Group {
    /// The group `name` (the processors' durable prefix), its bucket created if missing, forgetting a
    /// record `ttl` after its last write; the bucket has `replicas` replicas.
    pub async fn join(
        js: &jetstream::Context,
        name: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Group, GroupError> {
        // Created, or updated so that a changed `ttl` takes effect.
        let store = js
            .create_or_update_key_value(kv::Config {
                bucket: BUCKET.to_owned(),
                history: 1,
                max_age: ttl,
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(err)?;
        Ok(Group { store, name: name.to_owned() })
    }

    /// Opens the group `name` to read it (the API); `None` when no processor ever joined any group (its
    /// bucket does not exist). NATS not answering is an error, never taken for an empty group.
    pub async fn open(js: &jetstream::Context, name: &str) -> Result<Option<Group>, GroupError> {
        match js.get_key_value(BUCKET).await {
            Ok(store) => Ok(Some(Group { store, name: name.to_owned() })),
            // The bucket's own error does not say why; the stream's, its source, does.
            Err(e)
                if std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<jetstream::context::GetStreamError>())
                    .is_some_and(crate::streams::missing) =>
            {
                Ok(None)
            }
            Err(e) => Err(err(e)),
        }
    }

    fn key(&self, me: &Member) -> String {
        format!("{}.{}", self.name, me.id)
    }

    /// Writes `me`'s record: one heartbeat.
    pub async fn beat(&self, me: &Member) -> Result<(), GroupError> {
        let value = serde_json::to_vec(me).map_err(err)?;
        self.store.put(self.key(me), value.into()).await.map_err(err)?;
        Ok(())
    }

    /// Removes `me`'s record: the others take its partitions at their next heartbeat.
    pub async fn leave(&self, me: &Member) -> Result<(), GroupError> {
        self.store.purge(self.key(me)).await.map_err(err)
    }

    /// The members alive: those whose record was written within the last `ttl`, by join order.
    ///
    /// The keys are read off the bucket's stream info (its subjects), not with a consumer, so that a
    /// reader needs no right to create consumers.
    pub async fn members(&self) -> Result<Vec<Member>, GroupError> {
        let prefix = format!("$KV.{BUCKET}.");
        let subjects: Vec<(String, usize)> = self
            .store
            .stream
            .info_with_subjects(format!("{prefix}{}.>", self.name))
            .await
            .map_err(err)?
            .try_collect()
            .await
            .map_err(err)?;
        let mut members = Vec::with_capacity(subjects.len());
        for (subject, _) in subjects {
            let Some(key) = subject.strip_prefix(&prefix) else { continue };
            if let Some(value) = self.store.get(key).await.map_err(err)?
                && let Ok(member) = serde_json::from_slice::<Member>(&value)
            {
                members.push(member);
            }
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }
}

/// How far behind one durable consumer (a partition) is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Messages of its subjects not yet delivered to it.
    pub waiting: u64,
    /// Messages delivered to it and not yet acked.
    pub unacked: u64,
    /// How long ago the oldest message not yet acked was stored; zero when there is none.
    pub oldest_unacked: Duration,
}

impl Lag {
    /// Every message not yet acked: waiting or in hand.
    pub fn pending(&self) -> u64 {
        self.waiting + self.unacked
    }
}

/// The lag of the durable consumer `durable` of `stream`, whose subjects are `filter`; `None` while the
/// consumer does not exist, an error when the server cannot say (it was taken as no lag at all).
pub async fn lag(stream: &jetstream::stream::Stream, durable: &str, filter: &str) -> Result<Option<Lag>, GroupError> {
    use jetstream::context::ConsumerInfoErrorKind as Kind;
    let info = match stream.consumer_info(durable).await {
        Ok(info) => info,
        Err(e) if matches!(e.kind(), Kind::NotFound | Kind::StreamNotFound) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mut lag = Lag { waiting: info.num_pending, unacked: info.num_ack_pending as u64, ..Lag::default() };
    if lag.pending() > 0
        && let Ok(oldest) = stream.direct_get_next_for_subject(filter, Some(info.ack_floor.stream_sequence + 1)).await
    {
        lag.oldest_unacked = (chrono::Utc::now() - oldest.time).to_std().unwrap_or_default();
    }
    Ok(Some(lag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member { id: id.to_owned(), host: "h".into(), pid: 1, owns: Vec::new(), aside: Vec::new() }
    }

    fn units(kinds: &[&'static str], per_kind: usize) -> Vec<(String, &'static str)> {
        kinds.iter().flat_map(|k| (0..per_kind).map(move |p| (format!("{k}-p{p}"), *k))).collect()
    }

    fn owners<'a>(dealt: &'a [(String, &'a Member)]) -> Vec<(&'a str, &'a str)> {
        dealt.iter().map(|(u, m)| (u.as_str(), m.id.as_str())).collect()
    }

    #[test]
    fn units_are_dealt_round_by_join_order() {
        let units = units(&["price"], 8);
        let members = [member("3"), member("1"), member("2")];
        let owners: Vec<&str> = assign(&members, &units).iter().map(|(_, m)| m.id.as_str()).collect();
        assert_eq!(owners, ["1", "2", "3", "1", "2", "3", "1", "2"]);
        assert!(assign(&[], &units).is_empty());
    }

    #[test]
    fn a_member_joining_last_takes_a_share_and_the_rest_stay() {
        let units = units(&["price"], 4);
        let three = [member("1"), member("2"), member("3")];
        let four = [member("1"), member("2"), member("3"), member("4")];
        let before = assign(&three, &units);
        let after = assign(&four, &units);
        let moved = before.iter().zip(&after).filter(|(b, a)| b.1.id != a.1.id).count();
        assert_eq!(moved, 1, "only the last unit moves to the newcomer");
    }

    /// A member standing aside from a kind keeps its share of the others; that kind's units it would have
    /// had go to the members that take it, and to none when no member does.
    #[test]
    fn a_member_standing_aside_from_a_kind_hands_its_units_of_that_kind_round() {
        let units = units(&["price", "metric"], 3);
        let mut stale = member("1");
        stale.aside = vec!["price".into()];
        let members = [stale.clone(), member("2"), member("3")];
        assert_eq!(
            owners(&assign(&members, &units)),
            [
                ("price-p0", "2"),
                ("price-p1", "2"),
                ("price-p2", "3"),
                ("metric-p0", "1"),
                ("metric-p1", "2"),
                ("metric-p2", "3")
            ]
        );
        let mut other = member("2");
        other.aside = vec!["price".into()];
        let both = [stale, other];
        let dealt = assign(&both, &units);
        let alone: Vec<&str> = owners(&dealt).into_iter().map(|(u, _)| u).collect();
        assert_eq!(alone, ["metric-p0", "metric-p1", "metric-p2"], "no member takes prices");
    }

    #[test]
    fn a_record_without_aside_reads_as_taking_every_kind() {
        let old = r#"{"id":"1","host":"h","pid":1,"owns":["processor-price-p0"]}"#;
        let m: Member = serde_json::from_str(old).unwrap();
        assert!(m.aside.is_empty());
        let written = serde_json::to_string(&member("1")).unwrap();
        assert!(!written.contains("aside"), "{written}: as older processors write it");
    }

    #[test]
    fn member_ids_sort_by_join_time() {
        let me = Member::this_process();
        assert_eq!(me.id.split('-').next().map(str::len), Some(13), "{}", me.id);
        assert!(me.id.contains(&format!("-{}-", std::process::id())), "{}", me.id);
        assert_ne!(Member::this_process().id, me.id, "two members of one process differ");
        assert!(me.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{}", me.id);
    }
}
