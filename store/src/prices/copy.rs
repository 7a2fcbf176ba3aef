//! New price points as PostgreSQL's binary `COPY` format: the cheapest way to insert rows (no SQL to
//! plan, no arrays to unpack, no conflict check per row). Only points known not to be stored yet are
//! written this way, and only from [`super::write_batch`]'s threshold on.
//!
//! A `COPY` must run from its start to `finish` once begun: sqlx does not account for a `COPY` dropped
//! half-way, and the connection, back in the pool, would read the replies of the abandoned `COPY` as the
//! next statement's. The processor runs every commit as a task of its own for this reason.
//!
//! The format (<https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>): a signature and
//! two zero words, then per row a 16-bit field count and per field a 32-bit length (-1 for NULL) and the
//! value in its type's binary send format, then a -1 trailer.

use super::Row;
use bytes::BufMut;

/// The statement the rows of a [`CopyRows`] are sent to.
pub const STATEMENT: &str =
    "COPY price_points (instrument, ts, price, volume, seq, ret, derived) FROM STDIN (FORMAT binary)";

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// The binary format version of `jsonb`.
const JSONB_VERSION: u8 = 1;

/// Rows of `price_points`, encoded as they are added.
pub struct CopyRows {
    buf: Vec<u8>,
    /// `"name":` per derived value, JSON-escaped once.
    keys: Vec<Vec<u8>>,
}

impl CopyRows {
    /// An empty set for derived values named `names`.
    pub fn new(names: &[String]) -> CopyRows {
        let mut buf = Vec::new();
        buf.put_slice(SIGNATURE);
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        let keys = names
            .iter()
            .map(|n| {
                let mut k = serde_json::to_vec(n).expect("a string serialises");
                k.push(b':');
                k
            })
            .collect();
        CopyRows { buf, keys }
    }

    /// Encodes one row of `instrument`. Derived values are written as a JSON object in `names` order,
    /// each number written by serde_json (shortest round-trip form; not finite → `null`), so the
    /// stored `jsonb` is what an insert of the same `serde_json::Value` stores.
    pub fn push(&mut self, instrument: &str, r: &Row) {
        let b = &mut self.buf;
        b.put_i16(7);
        b.put_i32(instrument.len() as i32);
        b.put_slice(instrument.as_bytes());
        b.put_i32(8);
        b.put_i64(r.ts.timestamp_micros() - PG_EPOCH_MICROS);
        b.put_i32(8);
        b.put_f64(r.point.price);
        put_opt_f64(b, r.volume);
        b.put_i32(8);
        b.put_i64(r.seq);
        put_opt_f64(b, r.point.ret);
        let len_at = b.len();
        b.put_i32(0);
        b.put_u8(JSONB_VERSION);
        b.put_u8(b'{');
        for (i, (k, v)) in self.keys.iter().zip(&r.point.values).enumerate() {
            if i > 0 {
                b.put_u8(b',');
            }
            b.put_slice(k);
            match v {
                // serde_json writes a float that is not finite as `null`, too.
                Some(v) => serde_json::to_writer(&mut *b, v).expect("writing to a Vec"),
                None => b.put_slice(b"null"),
            }
        }
        b.put_u8(b'}');
        let len = (b.len() - len_at - 4) as i32;
        b[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The encoded rows with the trailer, ready to send.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.put_i16(-1);
        self.buf
    }
}

fn put_opt_f64(b: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) => {
            b.put_i32(8);
            b.put_f64(v);
        }
        None => b.put_i32(-1),
    }
}
