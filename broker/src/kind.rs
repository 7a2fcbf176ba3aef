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

    /// Whether the NATS server splits this kind into partitions (`price.ACME` stored as `price.p.<n>.ACME`
    /// by a `partition()` subject mapping, see `broker/nats/`), so processor replicas can each own some.
    pub fn partitioned(self) -> bool {
        matches!(self, Kind::Price | Kind::Sample)
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
        if rest.is_empty() || rest.contains('.') || rest.contains(['*', '>', ' ']) || rest.contains(char::is_control) {
            return Err(format!(
                "unknown subject shape {subject:?}: expected {}.<key> with a single-token key",
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
        _ => kind.key_of(subject).map(|_| kind),
    }
}

/// The nats-server `mappings` block that splits every partitioned kind into `partitions` partitions
/// (`price.ACME` → `price.p.<n>.ACME`, n = FNV-1a of the key mod `partitions`), as `broker/nats/accounts.conf`
/// does for 8. Processors must run with the same `processor.partitions`.
pub fn partition_mappings(partitions: u32) -> String {
    let lines: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| k.partitioned())
        .map(|k| {
            let p = k.prefix();
            format!("  \"{p}.*\": \"{p}.{PARTITION_TOKEN}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}\"\n")
        })
        .collect();
    format!("mappings = {{\n{}}}\n", lines.concat())
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
        && key.len() <= 128
        && !key.contains(['.', '*', '>'])
        && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mappings tests and the bench give their private servers are the shipped server's (for 8).
    #[test]
    fn partition_mappings_match_the_shipped_server_config() {
        let shipped = include_str!("../nats/accounts.conf");
        let ours = partition_mappings(8);
        let lines: Vec<&str> = ours.lines().filter(|l| l.contains(':')).map(str::trim).collect();
        assert_eq!(lines.len(), 2, "{ours}");
        for line in lines {
            assert!(shipped.lines().any(|l| l.trim() == line), "{line} not in accounts.conf");
        }
    }

    #[test]
    fn keys_are_single_tokens() {
        assert_eq!(Kind::Price.key_of("price.ACME"), Ok("ACME"));
        assert!(Kind::Price.key_of("price.A.B").is_err());
        assert!(Kind::Price.key_of("price.").is_err());
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
        assert_eq!(Kind::Sample.partition_filter(2), "metric.p.2.>");
        assert_eq!(parse_subject("fleet.driver.7"), Ok(Kind::Fleet));
        assert_eq!(parse_subject("survey.blue"), Ok(Kind::Survey));
        assert!(parse_subject("fleet.7").unwrap_err().contains("fleet.driver.<id>"));
        assert!(parse_subject("nope.x").unwrap_err().contains("unknown subject"));
    }
}
