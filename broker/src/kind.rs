//! The kinds of event: which subjects carry them and which stream stores them.

use std::fmt;

/// A kind of event. Each kind has one subject prefix and one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `price.<instrument>`: one price of one instrument.
    Price,
    /// `index.<name>`: the definition of a weighted index.
    Index,
    /// `metric.<host>`: a sample of numeric fields of one host.
    Sample,
    /// `port.<unlocode>`: one port.
    Port,
    /// `fleet.driver.<id>` / `fleet.shipment.<id>`: a driver or a shipment, or its deletion.
    Fleet,
    /// `survey.<provider>`: an item pulled from a survey provider, or the outcome of a pull.
    Survey,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 6] = [Kind::Price, Kind::Index, Kind::Sample, Kind::Port, Kind::Fleet, Kind::Survey];

    /// The first subject token, e.g. `price`.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Price => "price",
            Kind::Index => "index",
            Kind::Sample => "metric",
            Kind::Port => "port",
            Kind::Fleet => "fleet",
            Kind::Survey => "survey",
        }
    }

    /// The JetStream stream that stores this kind.
    pub fn stream(self) -> &'static str {
        match self {
            Kind::Price => "PRICES",
            Kind::Index => "INDICES",
            Kind::Sample => "METRICS",
            Kind::Port => "PORTS",
            Kind::Fleet => "FLEET",
            Kind::Survey => "SURVEYS",
        }
    }

    /// The subject filter of the stream, e.g. `price.>`.
    pub fn filter(self) -> String {
        format!("{}.>", self.prefix())
    }

    /// How a user writes this kind's subjects, e.g. `price.<instrument>`.
    pub fn shape(self) -> &'static str {
        match self {
            Kind::Price => "price.<instrument>",
            Kind::Index => "index.<name>",
            Kind::Sample => "metric.<host>",
            Kind::Port => "port.<unlocode>",
            Kind::Fleet => "fleet.driver.<id> or fleet.shipment.<id>",
            Kind::Survey => "survey.<provider>",
        }
    }

    /// The subject for one key, e.g. `price.ACME`.
    pub fn subject(self, key: &str) -> String {
        format!("{}.{key}", self.prefix())
    }

    /// The kind whose prefix starts `subject`, if any.
    pub fn of_subject(subject: &str) -> Option<Kind> {
        let prefix = subject.split('.').next()?;
        Kind::ALL.into_iter().find(|k| k.prefix() == prefix)
    }

    /// Whether the stream splits this kind into partitions (`price.ACME` stored as `price.p.<n>.ACME` by
    /// its subject transform, [`partition_transform`]), so processors can each own some.
    pub fn partitioned(self) -> bool {
        matches!(self, Kind::Price | Kind::Sample)
    }

    /// The subjects its stream takes from publishers: every subject of the kind (`price.>`: one of the
    /// wrong shape is stored, and the processor dead-letters it with its reason), or, when the stream is
    /// split into partitions, only `price.<key>`, the shape the partition transform rewrites. Any other
    /// subject would be stored as it came, where no partition's consumer reads it: lost without a word.
    /// JetStream now refuses it (no stream answers the publish).
    pub fn stream_subjects(self, partitions: u32) -> Vec<String> {
        match partition_transform(self, partitions) {
            Some(t) => vec![t.source],
            None => vec![self.filter()],
        }
    }

    /// The subjects of one partition, e.g. `price.p.3.>`.
    pub fn partition_filter(self, partition: u32) -> String {
        format!("{}.{PARTITION_TOKEN}.{partition}.>", self.prefix())
    }

    /// The key of a subject of this kind: `price.ACME` → `ACME`; a partitioned subject `price.p.3.ACME`
    /// has the same key.
    ///
    /// Exactly one token must follow the prefix (or the partition); anything else is an unknown subject
    /// shape.
    pub fn key_of(self, subject: &str) -> Result<&str, String> {
        let rest = subject
            .strip_prefix(self.prefix())
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| format!("subject {subject:?} is not a {} subject", self.prefix()))?;
        let rest = strip_partition(rest).unwrap_or(rest);
        // Keys are stored as (parts of) primary keys: PostgreSQL would refuse a long one on every delivery.
        if rest.chars().count() > MAX_KEY {
            return Err(format!("subject {subject:?}: its key is longer than {MAX_KEY} characters"));
        }
        // The rules of every key ([`valid_key`]), whitespace of any kind refused among them: clients split
        // protocol lines on it (async-nats did on every Unicode space; see third_party/README.md).
        if !valid_key(rest) {
            return Err(format!(
                "unknown subject shape {subject:?}: expected {}.<key> with a single-token key (no whitespace)",
                self.prefix()
            ));
        }
        Ok(rest)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// The kind of `subject`, with its shape checked (`fleet.driver.<id>` has two tokens after its prefix,
/// every other kind one).
pub fn parse_subject(subject: &str) -> Result<Kind, String> {
    let kind = Kind::of_subject(subject).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.shape()).collect();
        format!("unknown subject {subject:?}: expected one of {}", known.join(", "))
    })?;
    match kind {
        Kind::Fleet => match subject.strip_prefix("fleet.").and_then(|rest| rest.split_once('.')) {
            Some(("driver" | "shipment", id)) if valid_key(id) => Ok(kind),
            _ => Err(format!("unknown subject shape {subject:?}: expected {}", Kind::Fleet.shape())),
        },
        _ => {
            kind.key_of(subject)?;
            match partition_key(kind, subject) {
                Some(_) => Err(format!(
                    "subject {subject:?} has the shape of a partition's ({}.p.<n>.<key>), which only the streams \
                     write: publish to {}",
                    kind.prefix(),
                    kind.shape()
                )),
                None => Ok(kind),
            }
        }
    }
}

/// The subject its publisher wrote for a stored subject: `price.p.3.ACME` → `price.ACME` (the stream put the
/// partition in); any other subject as it is. A replay publishes there, so that the stream partitions it
/// by the count it has now.
pub fn published_subject(subject: &str) -> std::borrow::Cow<'_, str> {
    let unpartitioned =
        Kind::of_subject(subject).filter(|k| k.partitioned()).and_then(|k| Some(k.subject(partition_key(k, subject)?)));
    unpartitioned.map_or(std::borrow::Cow::Borrowed(subject), std::borrow::Cow::Owned)
}

/// The key of `subject` when it is a partition's subject of `kind` (`price.p.3.ACME` → `ACME`).
fn partition_key(kind: Kind, subject: &str) -> Option<&str> {
    strip_partition(subject.strip_prefix(kind.prefix())?.strip_prefix('.')?)
}

/// The stream subject transform that splits a partitioned kind into `partitions` partitions as JetStream
/// stores it (`price.ACME` → `price.p.<n>.ACME`, n = the server's FNV-1a of the key mod `partitions`):
/// `None` for a kind that is not partitioned, or one partition. The streams carry it themselves
/// ([`crate::streams::ensure`]), so a plain `nats-server -js` runs partitioned processors.
pub fn partition_transform(kind: Kind, partitions: u32) -> Option<async_nats::jetstream::stream::SubjectTransform> {
    (kind.partitioned() && partitions > 1).then(|| {
        let p = kind.prefix();
        async_nats::jetstream::stream::SubjectTransform {
            source: format!("{p}.*"),
            destination: format!("{p}.{PARTITION_TOKEN}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"),
        }
    })
}

/// The token that marks a partitioned subject: `<prefix>.p.<n>.<key>`.
pub const PARTITION_TOKEN: &str = "p";

/// `p.3.ACME` → `ACME`.
fn strip_partition(rest: &str) -> Option<&str> {
    let rest = rest.strip_prefix(PARTITION_TOKEN)?.strip_prefix('.')?;
    let (n, key) = rest.split_once('.')?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(key)
}

/// Whether `key` can be used as one subject token (a key of any kind).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().count() <= MAX_KEY
        && !key.contains(['.', '*', '>'])
        && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The longest key, in characters (so at most 512 bytes): keys are stored as (parts of) primary keys, and
/// PostgreSQL refuses an index entry over about 2.7 kB. Characters, not bytes, as the OpenAPI document's
/// `maxLength` counts them: a key of 100 `é` (200 bytes) was valid by the document and refused.
pub const MAX_KEY: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitioned_kinds_with_partitions_are_transformed() {
        let t = partition_transform(Kind::Price, 8).expect("prices are partitioned");
        assert_eq!(t.source, "price.*");
        assert_eq!(t.destination, "price.p.{{partition(8,1)}}.{{wildcard(1)}}");
        assert!(partition_transform(Kind::Price, 1).is_none());
        assert!(partition_transform(Kind::Index, 8).is_none());
        assert_eq!(partition_transform(Kind::Sample, 2).map(|t| t.source), Some("metric.*".to_owned()));
    }

    #[test]
    fn keys_are_single_tokens() {
        assert_eq!(Kind::Price.key_of("price.ACME"), Ok("ACME"));
        assert!(Kind::Price.key_of("price.A.B").is_err());
        assert!(Kind::Price.key_of("price.").is_err());
        for spaced in ["price.\u{a0}ab", "price.a\u{2003}b", "price.\u{3000}", "price.a\tb"] {
            assert!(Kind::Price.key_of(spaced).unwrap_err().contains("no whitespace"), "{spaced:?}");
        }
        assert!(Kind::Price.key_of("metric.A").is_err());
        assert_eq!(Kind::of_subject("index.world"), Some(Kind::Index));
        assert_eq!(Kind::of_subject("nope.x"), None);
        assert!(valid_key("S-0_1"));
        assert!(!valid_key("a b"));
        assert!(!valid_key("a.b"));
        assert_eq!(Kind::Price.key_of("price.p.3.ACME"), Ok("ACME"));
        assert_eq!(Kind::Price.key_of("price.p"), Ok("p"));
        assert!(Kind::Price.key_of("price.p.x.ACME").is_err());
        assert!(Kind::Price.key_of("price.p.3.A.B").is_err());
        assert!(Kind::Sample.key_of(&format!("metric.{}", "h".repeat(128))).is_ok());
        assert!(Kind::Sample.key_of(&format!("metric.{}", "h".repeat(129))).unwrap_err().contains("longer than 128"));
        assert!(Kind::Sample.key_of(&format!("metric.{}", "é".repeat(128))).is_ok(), "256 bytes, 128 characters");
        assert!(valid_key(&"é".repeat(128)) && !valid_key(&"é".repeat(129)));
        assert_eq!(Kind::Sample.partition_filter(2), "metric.p.2.>");
        assert_eq!(parse_subject("fleet.driver.7"), Ok(Kind::Fleet));
        assert_eq!(parse_subject("survey.blue"), Ok(Kind::Survey));
        assert!(parse_subject("fleet.7").unwrap_err().contains("fleet.driver.<id>"));
        assert!(parse_subject("nope.x").unwrap_err().contains("unknown subject"));
        // A partition's subject is the stream's own: a publisher writes the key's.
        assert!(parse_subject("price.p.3.ACME").unwrap_err().contains("publish to price.<instrument>"));
        assert_eq!(parse_subject("price.p"), Ok(Kind::Price));
        assert_eq!(published_subject("price.p.3.ACME"), "price.ACME");
        assert_eq!(published_subject("metric.p.0.h-1"), "metric.h-1");
        assert_eq!(published_subject("price.ACME"), "price.ACME");
        assert_eq!(published_subject("fleet.driver.7"), "fleet.driver.7");
        assert_eq!(published_subject("price"), "price", "a subject of a prefix alone, from a letter's header");
    }

    #[test]
    fn a_partitioned_stream_takes_only_the_subjects_its_transform_rewrites() {
        assert_eq!(Kind::Price.stream_subjects(1), ["price.>"]);
        assert_eq!(Kind::Price.stream_subjects(4), ["price.*"]);
        assert_eq!(Kind::Fleet.stream_subjects(4), ["fleet.>"]);
    }
}
