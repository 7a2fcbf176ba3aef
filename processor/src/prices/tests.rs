//! The price path's pure parts: the split hint and the chunked rewrite.

use super::*;
use proptest::prelude::*;
use series::Point;
use series::tests::noise;

#[test]
fn a_split_puts_the_known_constituents_of_an_index_in_one_part() {
    let mut index_of = IndexOf { capacity: 100, index: HashMap::new() };
    let constituents: Vec<(String, String)> =
        (0..10).map(|i| (format!("S{i}"), "idx".to_owned())).chain([("S3".into(), "a-first".into())]).collect();
    let changed: Vec<String> = (0..10).map(|i| format!("S{i}")).collect();
    let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
    index_of.learn(&changed, &constituents);
    // S3 is in two indices: it goes with the first by name, the rest with "idx".
    assert_eq!(index_of.index["S3"], "a-first");
    let batch: Vec<String> = (0..200).map(|i| format!("S{}", i % 100)).collect();
    let parts = lock::split_by(&batch, 2, |s| lock::key("price", s), |s| index_of.group(s));
    assert_eq!(parts.len(), 2, "the other instruments still spread over both parts");
    let with_idx: Vec<usize> = (0..parts.len())
        .filter(|&p| {
            parts[p].iter().any(|s| ["S0", "S1", "S2", "S4", "S5", "S6", "S7", "S8", "S9"].contains(&s.as_str()))
        })
        .collect();
    assert_eq!(with_idx.len(), 1, "every constituent of idx in one part");
    for name in ["S3", "S42"] {
        assert_eq!(parts.iter().filter(|p| p.iter().any(|s| *s == name)).count(), 1, "{name} in one part");
    }
    // A changed instrument no longer returned as a constituent is forgotten.
    index_of.learn(&["S0"], &[]);
    assert!(!index_of.index.contains_key("S0"));
    assert_eq!(index_of.group("S0"), lock::key("price", "S0"));
}

/// The chunked rewrite equals the batch computation whatever the chunk size: a series kept in memory
/// as the table, incoming corrections, new and redelivered points anywhere in it, read `chunk` points
/// at a time with the window and incoming points carried between chunks as `attempt` does.
#[test]
fn a_rewrite_read_in_chunks_equals_the_batch_computation() {
    use chrono::TimeZone;
    let config = proptest::test_runner::Config::with_cases(200);
    proptest::proptest!(config, |(
        noise in noise(0..400),
        chunk in 1usize..40,
        incoming in proptest::collection::vec((0usize..500, 0u8..4, -0.1f64..0.1), 1..12),
        small in any::<bool>(),
    )| {
        let t = if small { Transforms { sma: vec![3], ema: vec![4], vol: vec![2] } } else { Transforms::default() };
        let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let ts = |i: usize| day0 + chrono::Duration::hours(i as i64);
        // The table: every other hour of `2 * len`, so that new points can fall between stored ones.
        let len = noise.len();
        let mut raw: BTreeMap<DateTime<Utc>, (f64, i64)> = BTreeMap::new();
        for (i, x) in noise.iter().enumerate() {
            raw.insert(ts(2 * i), (100.0 + (x % 1000) as f64 / 100.0, 1));
        }
        let computed = |raw: &BTreeMap<DateTime<Utc>, (f64, i64)>| -> Vec<Row> {
            let mut points: Vec<Point> = raw.values().map(|(p, _)| Point::raw(*p)).collect();
            series::recompute(&t, &mut points, 0);
            raw.iter().zip(points).map(|((ts, (_, seq)), point)| Row { ts: *ts, volume: None, seq: *seq, point }).collect()
        };
        let mut table: BTreeMap<DateTime<Utc>, Row> = computed(&raw).into_iter().map(|r| (r.ts, r)).collect();
        // Incoming: a correction, a redelivery or a new point, each with a higher sequence.
        let mut by_ts: BTreeMap<DateTime<Utc>, Incoming> = BTreeMap::new();
        for (k, (at, what, d)) in incoming.iter().enumerate() {
            let at = ts(*at % (2 * len + 2));
            let seq = 2 + k as i64;
            let price = match (what, raw.get(&at)) {
                (0, Some((p, _))) => *p,
                (_, Some((p, _))) => p * (1.0 + d),
                (_, None) => 100.0 * (1.0 + d),
            };
            by_ts.insert(at, Incoming { ts: at, price, volume: None, seq });
        }
        let incoming: Vec<Incoming> = by_ts.values().copied().collect();
        for inc in &incoming {
            raw.insert(inc.ts, (inc.price, inc.seq));
        }
        let (tail, _) = rewrite(&t, &mut table, &incoming, chunk);
        let want = computed(&raw);
        let got: Vec<&Row> = table.values().collect();
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(g.ts == w.ts && g.seq == w.seq && series::same_bits(&g.point, &w.point), "at {}: {:?} vs {:?}", w.ts, g, w);
        }
        if let Some(tail) = tail {
            let n = want.len().saturating_sub(t.window());
            prop_assert!(tail.iter().zip(&want[n..]).all(|(a, b)| a.ts == b.ts && series::same_bits(&a.point, &b.point)));
        }
    });
}

/// The rewrite of `table` (a series in memory) by `incoming`, chunk by chunk as `attempt` does it, writing
/// to the table as it goes: the tail it ends with (when it reached the series' end), and how many reads
/// of the table it made.
fn rewrite(
    t: &Transforms,
    table: &mut BTreeMap<DateTime<Utc>, Row>,
    incoming: &[Incoming],
    chunk: usize,
) -> (Option<Vec<Row>>, usize) {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let t0 = incoming[0].ts;
    let mut window: Vec<Row> = table.range(..t0).rev().take(t.window()).map(|(_, r)| r.clone()).collect();
    window.reverse();
    let read = |table: &BTreeMap<DateTime<Utc>, Row>, from| -> Vec<Row> {
        table.range((from, Unbounded)).take(chunk).map(|(_, r)| r.clone()).collect()
    };
    let first = read(table, Included(t0));
    let complete = first.len() < chunk;
    let mut reads = 1;
    let mut step = merge(t, window, first, incoming, complete, false);
    loop {
        for r in std::mem::take(&mut step.rows) {
            table.insert(r.ts, r);
        }
        let Some(mut carry) = step.carry.take() else { return (step.tail, reads) };
        let (window, next) = match carry.next_read() {
            merge::NextRead::Skipping { after, next } => {
                let between: Vec<Row> =
                    table.range((Excluded(after), Excluded(next))).map(|(_, r)| r.clone()).collect();
                let between = between[between.len().saturating_sub(t.window())..].to_vec();
                (carry.window_with(between, t.window()), read(table, Included(next)))
            }
            merge::NextRead::After(after) => (std::mem::take(&mut carry.window), read(table, Excluded(after))),
        };
        reads += 1;
        let complete = next.len() < chunk;
        step = merge(t, window, next, carry.incoming, complete, carry.unsettled);
    }
}

/// A correction deep in a long series batched with an append reads the chunks where they change things,
/// not every point between them: once the correction's effect has died out, the rewrite reads on from
/// the window before the append. (It read all 10,000 points here, 40 at a time: 250 reads.)
#[test]
fn a_correction_and_an_append_in_one_batch_read_what_they_change() {
    use chrono::TimeZone;
    let t = Transforms { sma: vec![3], ema: vec![4], vol: vec![2] };
    let day0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let ts = |i: usize| day0 + chrono::Duration::hours(i as i64);
    let n = 10_000;
    let mut points: Vec<Point> = (0..n).map(|i| Point::raw(100.0 + (i % 17) as f64 * 0.25)).collect();
    series::recompute(&t, &mut points, 0);
    let mut table: BTreeMap<DateTime<Utc>, Row> = points
        .into_iter()
        .enumerate()
        .map(|(i, point)| (ts(i), Row { ts: ts(i), volume: None, seq: 1, point }))
        .collect();
    let incoming = [
        Incoming { ts: ts(5), price: 99.0, volume: None, seq: 2 },
        Incoming { ts: ts(n), price: 101.0, volume: None, seq: 3 },
    ];
    let (tail, reads) = rewrite(&t, &mut table, &incoming, 40);
    assert!(reads <= 4, "{reads} reads of 40 points for a correction and an append");
    // Equal to the batch computation over the corrected and appended prices.
    let mut want: Vec<Point> = table.values().map(|r| Point::raw(r.point.price)).collect();
    series::recompute(&t, &mut want, 0);
    assert_eq!(want.len(), n + 1);
    assert_eq!((table[&ts(5)].point.price, table[&ts(n)].point.price), (99.0, 101.0));
    for (k, (got, want)) in table.values().zip(&want).enumerate() {
        assert!(series::same_bits(&got.point, want), "point {k}: {:?} vs {want:?}", got.point);
    }
    assert_eq!(tail.and_then(|t| t.last().map(|r| r.ts)), Some(ts(n)), "the tail reaches the append");
}

#[test]
fn the_constituent_hint_is_bounded() {
    let mut index_of = IndexOf { capacity: 3, index: HashMap::new() };
    let constituents: Vec<(String, String)> = (0..10).map(|i| (format!("S{i}"), "idx".to_owned())).collect();
    index_of.learn(&[], &constituents);
    assert!(index_of.index.len() <= 3);
}
