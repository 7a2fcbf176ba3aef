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
    /// How it deals the units ([`assign`]): [`DEALS`]; 0, absent from their records, for the processors
    /// that dealt by join order.
    #[serde(default)]
    pub deals: u32,
}

/// How this version deals the units: shared evenly per kind, kept by their owners, the rest by rendezvous
/// hashing ([`assign`]).
pub const DEALS: u32 = 1;

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
        let (owns, aside) = (Vec::new(), Vec::new());
        Member { id: format!("{started:013}-{safe}-{pid}-{n}"), host, pid, owns, aside, deals: DEALS }
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

/// Which member consumes each unit, given as (name, kind).
///
/// Each kind's units are shared evenly by the members that take that kind ([`Member::aside`]; a kind every
/// member stands aside from goes to none): each gets its count or one more, the ones more going to the
/// members with the fewest units so far, so that the totals are even too. Within those counts a member
/// keeps the units it owns now ([`Member::owns`]), those it ranks highest first, and the rest go by rank:
/// each to the member that ranks it highest among those with room (rendezvous hashing, a hash of the unit
/// and the member). So a member that joins takes its share and the others keep theirs, and a leaver's
/// units are spread over the rest. (Dealt round by join order, `i mod M`, a fourth member moved 10 of 16
/// units.) Every process computes the same answer from the same records, each record saying how its member
/// deals ([`Member::deals`]).
pub fn assign<'a>(members: &'a [Member], units: &[(String, &str)]) -> Vec<(String, &'a Member)> {
    // While a member deals otherwise (an older processor, in a rolling upgrade), every member deals as it
    // does: two rules at once left units that each rule gave to a member of the other consumed by no one.
    if members.iter().any(|m| m.deals < DEALS) {
        return assign_round(members, units);
    }
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let rank = |what: &str, m: &Member| mix(crate::hash::fnv1a(&[what.as_bytes(), &[0xff], m.id.as_bytes()]));
    // Per unit (in the order given), its member; per member, how many units it has so far.
    let mut owner: Vec<Option<&Member>> = vec![None; units.len()];
    let mut total: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut kinds: Vec<&str> = Vec::new();
    for (_, kind) in units {
        if !kinds.contains(kind) {
            kinds.push(kind);
        }
    }
    for kind in kinds {
        let mut willing: Vec<&Member> = sorted.iter().copied().filter(|m| !m.aside.iter().any(|k| k == kind)).collect();
        if willing.is_empty() {
            continue;
        }
        let of_kind: Vec<usize> = (0..units.len()).filter(|&u| units[u].1 == kind).collect();
        // The members with the fewest units so far take one more (ties: by rank for this kind).
        willing.sort_by_key(|m| (total.get(m.id.as_str()).copied().unwrap_or(0), std::cmp::Reverse(rank(kind, m))));
        let (each, more) = (of_kind.len() / willing.len(), of_kind.len() % willing.len());
        let mut room: Vec<usize> = (0..willing.len()).map(|i| each + usize::from(i < more)).collect();
        // Every (unit, member) pair, the highest ranked first. A pair is taken while its unit is not dealt
        // and its member has room: first what the members own, then the rest (the rooms add up to the
        // units, so every unit is dealt).
        let mut pairs: Vec<(u64, usize, usize)> = of_kind
            .iter()
            .flat_map(|&u| willing.iter().enumerate().map(move |(m, member)| (rank(&units[u].0, member), u, m)))
            .collect();
        pairs.sort_unstable_by(|a, b| b.cmp(a));
        let mut deal = |&(_, u, m): &(u64, usize, usize)| {
            if owner[u].is_none() && room[m] > 0 {
                owner[u] = Some(willing[m]);
                room[m] -= 1;
                *total.entry(willing[m].id.as_str()).or_default() += 1;
            }
        };
        pairs.iter().filter(|(_, u, m)| willing[*m].owns.contains(&units[*u].0)).for_each(&mut deal);
        pairs.iter().for_each(&mut deal);
    }
    units.iter().zip(owner).filter_map(|((unit, _), m)| Some((unit.clone(), m?))).collect()
}

/// The first processors' dealing ([`Member::deals`] 0), which every member follows while one of them does
/// (a rolling upgrade): unit `i` (in the order given) goes to member `i mod M`, members in the order they
/// joined. A unit whose member stands aside from its kind ([`Member::aside`]) goes to the members that do
/// not, dealt round in the same way; a unit of a kind every member stands aside from goes to none.
fn assign_round<'a>(members: &'a [Member], units: &[(String, &str)]) -> Vec<(String, &'a Member)> {
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

/// SplitMix64's finaliser: FNV-1a alone mixes the last bytes poorly, and member ids differ in their last
/// digits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
        Member { id: id.to_owned(), host: "h".into(), pid: 1, owns: Vec::new(), aside: Vec::new(), deals: DEALS }
    }

    fn units(kinds: &[&'static str], per_kind: usize) -> Vec<(String, &'static str)> {
        kinds.iter().flat_map(|k| (0..per_kind).map(move |p| (format!("{k}-p{p}"), *k))).collect()
    }

    /// Per member: how many units of each kind, and in all.
    fn counts(dealt: &[(String, &Member)], members: &[Member]) -> Vec<(usize, usize, usize)> {
        let of = |m: &Member, kind: &str| dealt.iter().filter(|(u, o)| o.id == m.id && u.starts_with(kind)).count();
        members.iter().map(|m| (of(m, "price"), of(m, "metric"), of(m, ""))).collect()
    }

    #[test]
    fn every_kind_and_the_totals_are_shared_evenly() {
        for n in 1..=7 {
            let members: Vec<Member> = (0..n).map(|i| member(&format!("m{i}"))).collect();
            for per_kind in [1, 4, 8, 13] {
                let units = units(&["price", "metric"], per_kind);
                let dealt = assign(&members, &units);
                assert_eq!(dealt.len(), units.len(), "every unit dealt");
                assert!(dealt.iter().zip(&units).all(|((d, _), (u, _))| d == u), "in the order given");
                let c = counts(&dealt, &members);
                let spread = |f: fn(&(usize, usize, usize)) -> usize| {
                    c.iter().map(f).max().unwrap() - c.iter().map(f).min().unwrap()
                };
                assert!(spread(|c| c.0) <= 1 && spread(|c| c.1) <= 1, "{n} members, {per_kind} each: {c:?}");
                assert!(spread(|c| c.2) <= 1, "{n} members, {per_kind} each: totals {c:?}");
            }
        }
        assert!(assign(&[], &units(&["price"], 8)).is_empty());
        let three = [member("3"), member("1"), member("2")];
        let shuffled = [member("2"), member("3"), member("1")];
        let ids = |d: Vec<(String, &Member)>| d.into_iter().map(|(u, m)| (u, m.id.clone())).collect::<Vec<_>>();
        assert_eq!(ids(assign(&three, &units(&["price"], 8))), ids(assign(&shuffled, &units(&["price"], 8))));
    }

    /// Members as they describe themselves after dealing `units` to them: each owns what it was dealt.
    fn owning(members: &[Member], units: &[(String, &'static str)]) -> Vec<Member> {
        let dealt = assign(members, units);
        let mut next = members.to_vec();
        for m in &mut next {
            m.owns = dealt.iter().filter(|(_, o)| o.id == m.id).map(|(u, _)| u.clone()).collect();
        }
        next
    }

    /// A member that joins takes its share (or one more, as the counts per kind shift), a member that
    /// leaves hands over its own units only, and nothing moves while the members stay: 16 units in two
    /// kinds, over many sets of member ids.
    #[test]
    fn a_member_joining_or_leaving_moves_its_share_and_little_else() {
        let units = units(&["price", "metric"], 8);
        let owner = |members: &[Member]| -> Vec<String> {
            assign(members, &units).into_iter().map(|(_, m)| m.id.clone()).collect()
        };
        let moved = |a: &[String], b: &[String]| a.iter().zip(b).filter(|(x, y)| x != y).count();
        for trial in 0..200 {
            let ids: Vec<Member> = (0..7).map(|i| member(&format!("{trial:04}-host-{i}"))).collect();
            for n in 1..7 {
                let settled = owning(&ids[..n], &units);
                assert_eq!(owner(&owning(&settled, &units)), owner(&settled), "dealt again, the same");
                // One joins: it takes its share, the others keep the rest.
                let mut joined = settled.clone();
                joined.push(ids[n].clone());
                let share = 16usize.div_ceil(n + 1);
                let after = owner(&joined);
                let took = after.iter().filter(|o| **o == ids[n].id).count();
                assert!(took >= 16 / (n + 1), "{n} → {}: the newcomer took {took}", n + 1);
                let others = moved(&owner(&settled), &after) - took;
                assert!(took <= share && others <= 2, "{n} → {}: took {took}, {others} others moved", n + 1);
                // One leaves (any of them): its units move, and at most two others.
                if n > 1 {
                    let mut left = settled.clone();
                    let lost = left.remove(trial % n).owns.len();
                    let others = moved(&owner(&settled), &owner(&left)) - lost;
                    assert!(others <= 2, "{n} → {}: {lost} units lost, {others} others moved", n - 1);
                }
            }
        }
    }

    /// A member standing aside from a kind takes none of it, and the others share it; a kind every member
    /// stands aside from goes to none.
    #[test]
    fn a_member_standing_aside_from_a_kind_takes_none_of_it() {
        let units = units(&["price", "metric"], 3);
        let mut stale = member("1");
        stale.aside = vec!["price".into()];
        let members = [stale.clone(), member("2"), member("3")];
        let dealt = assign(&members, &units);
        assert_eq!(dealt.len(), 6);
        let c = counts(&dealt, &members);
        let mut prices = [c[1].0, c[2].0];
        prices.sort();
        assert_eq!((c[0].0, prices), (0, [1, 2]), "no price unit for the member standing aside: {c:?}");
        assert!(c.iter().all(|c| c.1 == 1), "one metric unit each: {c:?}");
        let mut other = member("2");
        other.aside = vec!["price".into()];
        let both = [stale, other];
        let alone: Vec<String> = assign(&both, &units).into_iter().map(|(u, _)| u).collect();
        assert_eq!(alone, ["metric-p0", "metric-p1", "metric-p2"], "no member takes prices");
    }

    /// While one member deals by join order (a processor from before, in a rolling upgrade), every member
    /// does, so that the two rules never leave a unit to no one; once none does, rendezvous again.
    #[test]
    fn while_a_member_deals_by_join_order_every_member_does() {
        let units = units(&["price", "metric"], 4);
        let mut old = member("1");
        old.deals = 0;
        let mixed = [old, member("2"), member("3")];
        let ids = |d: Vec<(String, &Member)>| d.into_iter().map(|(_, m)| m.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(assign(&mixed, &units)), ["1", "2", "3", "1", "2", "3", "1", "2"], "i mod M");
        let record = r#"{"id":"1","host":"h","pid":1,"owns":[]}"#;
        assert_eq!(serde_json::from_str::<Member>(record).unwrap().deals, 0, "an older record");
        let new = [member("1"), member("2"), member("3")];
        assert_ne!(ids(assign(&new, &units)), ids(assign(&mixed, &units)), "rendezvous once all deal so");
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
