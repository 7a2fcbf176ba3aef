//! The kinds of file an importer reads: one list for the `import` command and the upload route.

/// What a file (or an upload's body) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    /// A ports file: a JSON object keyed by UN/LOCODE.
    Ports,
    /// `instrument,ts,price[,volume]` lines.
    PricesCsv,
    /// One `{"subject": ..., "event": {...}}` per line.
    Ndjson,
    /// One number per line: their running statistics, published nowhere.
    Numbers,
}

impl ImportKind {
    /// Every kind, in the order help texts list them.
    pub const ALL: [ImportKind; 4] =
        [ImportKind::Ports, ImportKind::PricesCsv, ImportKind::Ndjson, ImportKind::Numbers];
    /// Their names, as the command line and the upload route take them.
    pub const NAMES: [&str; 4] = ["ports", "prices-csv", "ndjson", "numbers"];

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|k| *k == self).unwrap_or(0)]
    }
}

impl std::str::FromStr for ImportKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| format!("kind must be one of {}, got {s:?}", Self::NAMES.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::ImportKind;

    #[test]
    fn names_round_trip() {
        for k in ImportKind::ALL {
            assert_eq!(k.as_str().parse::<ImportKind>(), Ok(k));
        }
        assert!("zip".parse::<ImportKind>().unwrap_err().contains("ports, prices-csv, ndjson, numbers"));
    }
}
