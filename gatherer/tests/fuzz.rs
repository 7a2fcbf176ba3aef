//! Fuzzing the file decoders: the streaming ports JSON reader, CSV price lines and the numbers reader
//! never panic on arbitrary bytes or on mutated valid input, always end, and keep their memory bound.
//!
//! `PROPTEST_CASES` sets the cases per property (default 128 here; `scripts/fuzz.sh` runs more).

use proptest::prelude::*;
use tributary_gatherer::numbers;
use tributary_gatherer::ports::ObjectEntries;
use tributary_gatherer::prices::parse_line;

/// The first ports of the real file, as a valid object.
const PORTS: &str = r#"{
  "AEAJM": {"name": "Ajman", "city": "Ajman", "country": "United Arab Emirates", "alias": [], "regions": [],
            "coordinates": [55.5136433, 25.4052165], "province": "Ajman", "timezone": "Asia/Dubai",
            "unlocs": ["AEAJM"], "code": "52000"},
  "AEAUH": {"name": "Abu Dhabi", "coordinates": [54.37, 24.47], "city": "Abu Dhabi",
            "province": "Abu Z\u00b8aby [Abu Dhabi]", "country": "United Arab Emirates", "alias": [], "regions": [],
            "timezone": "Asia/Dubai", "unlocs": ["AEAUH"], "code": "52001"},
  "ZWUTA": {"name": "Mutare", "city": "Mutare", "country": "Zimbabwe", "alias": ["Umtali"], "regions": [],
            "coordinates": [32.650351, -18.9757714], "unlocs": ["ZWUTA"]}
}"#;

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Reads every member until the end or the first syntax error; returns how many were read.
fn read_ports(input: Vec<u8>) -> usize {
    let len = input.len();
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async move {
        let mut entries = ObjectEntries::new(std::io::Cursor::new(input));
        let mut n = 0;
        while let Ok(Some(_)) = entries.next().await {
            n += 1;
            assert!(n <= len, "more members than bytes: the reader does not advance");
        }
        assert!(entries.high_water() <= len.max(1) + 64 * 1024, "buffer beyond the input");
        n
    })
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(i, b, op) in edits {
        let len = bytes.len();
        match op % 4 {
            0 if len > 0 => bytes[i % len] = b,
            1 => bytes.insert(i % (len + 1), b),
            2 if len > 0 => {
                bytes.remove(i % len);
            }
            _ => bytes.truncate(i % (len + 1)),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn the_ports_reader_never_panics_on_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        read_ports(input);
    }

    #[test]
    fn the_ports_reader_never_panics_on_mutated_ports(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..10)) {
        read_ports(mutate(PORTS.as_bytes().to_vec(), &edits));
    }

    #[test]
    fn csv_lines_never_panic(line in "\\PC{0,80}") {
        let _ = parse_line(&line);
    }

    #[test]
    fn mutated_csv_lines_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let bytes = mutate(b"ACME,2026-11-20T10:00:00Z,101.5,1200".to_vec(), &edits);
        let _ = parse_line(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn the_numbers_reader_never_panics_and_accounts_for_every_line(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let pieces: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
        let lines = if input.is_empty() || input.ends_with(b"\n") { pieces.len() - 1 } else { pieces.len() };
        let nonblank = pieces.iter().filter(|l| !String::from_utf8_lossy(l).trim().is_empty()).count() as u64;
        let size = input.len() as u64;
        let report = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
            numbers::stats(std::io::Cursor::new(input), &mut |_, _| {}).await
        });
        prop_assert_eq!(report.read.progress.bytes, size);
        prop_assert_eq!(report.read.progress.entries, lines as u64);
        prop_assert_eq!(report.stats.count + report.read.progress.invalid, nonblank);
    }
}

#[test]
fn the_valid_ports_seed_reads_whole() {
    assert_eq!(read_ports(PORTS.as_bytes().to_vec()), 3);
}
