//! Commit notifications: the processor tells readers which series a transaction wrote, with PostgreSQL's
//! `NOTIFY` (delivered only once the transaction commits), so a reader's cache (the API's
//! `SeriesCache`) can drop what changed.

/// The channel naming the price series a committed transaction wrote, one per line.
pub const PRICE_SERIES_CHANNEL: &str = "tributary_price_series";

/// Named instead of the series when every series may have changed (not a valid series key).
pub const ALL_SERIES: &str = "*";

/// What a listener sends itself on [`PRICE_SERIES_CHANNEL`] ([`heartbeat`]) to learn that its connection
/// still hears (not a valid series key: series keys hold no space).
pub const HEARTBEAT: &str = "heartbeat, not a series";

/// Notifies [`HEARTBEAT`] on [`PRICE_SERIES_CHANNEL`].
pub async fn heartbeat(pool: &sea_orm::sqlx::PgPool) -> Result<(), sea_orm::sqlx::Error> {
    sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PRICE_SERIES_CHANNEL)
        .bind(HEARTBEAT)
        .execute(pool)
        .await
        .map(|_| ())
}

/// PostgreSQL refuses a payload of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;

/// The payloads that name `series`: names joined by newlines (a series key holds none), each under
/// PostgreSQL's limit; a name too long for one payload becomes [`ALL_SERIES`].
pub fn payloads<'a>(series: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for name in series {
        let name = if name.len() > MAX_PAYLOAD || name.contains('\n') { ALL_SERIES } else { name };
        if !current.is_empty() && current.len() + 1 + name.len() > MAX_PAYLOAD {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(name);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_name_every_series() {
        let names: Vec<String> = (0..3000).map(|i| format!("INSTRUMENT-{i}")).collect();
        let long = "x".repeat(9000);
        let all: Vec<&str> = names.iter().map(String::as_str).chain([long.as_str()]).collect();
        let p = payloads(all);
        assert!(p.len() > 1 && p.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let back: Vec<&str> = p.iter().flat_map(|p| p.split('\n')).collect();
        assert_eq!(back.len(), 3001);
        assert_eq!(back[..3000], names.iter().map(String::as_str).collect::<Vec<_>>()[..]);
        assert_eq!(back[3000], ALL_SERIES);
        assert!(payloads([]).is_empty());
    }
}
