//! The ports file's top-level object read member by member ([`ObjectEntries`]): a byte scanner that
//! finds each `"KEY": VALUE` member's bounds (strings, escapes, bracket depth) so that serde_json parses
//! one member at a time and memory stays one member plus one chunk.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest member accepted (bytes): a bound on memory, far above any real port.
pub const MAX_ENTRY: usize = 1 << 20;
pub(crate) const CHUNK: usize = 64 * 1024;

/// Where something is in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Byte offset from the start, 0-based.
    pub offset: u64,
    /// Line, 1-based.
    pub line: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, byte {}", self.line, self.offset)
    }
}

/// One member of the top-level object.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key, unescaped.
    pub key: String,
    /// The value's JSON text, exactly as in the input.
    pub value: Bytes,
    /// Where the member's key starts.
    pub at: Position,
}

/// The input is not a well-formed JSON object (or ends early); nothing after `at` is read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} at {at}")]
pub struct SyntaxError {
    /// Where.
    pub at: Position,
    /// What.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Start,
    FirstMember,
    NextMember,
    Done,
}

/// Members of a top-level JSON object, read incrementally from `R`.
pub struct ObjectEntries<R> {
    input: R,
    /// `buf[start..]` is unread; what is before it is dropped at the next read, once per chunk rather
    /// than once per member (a member is usually far smaller than a chunk).
    buf: Vec<u8>,
    start: usize,
    /// Absolute position of `buf[start]`.
    base: Position,
    eof: bool,
    state: State,
    high_water: usize,
    check_values: bool,
    /// Bytes read so far.
    pub bytes: u64,
}

impl<R: AsyncRead + Unpin> ObjectEntries<R> {
    /// Reads `input`.
    pub fn new(input: R) -> Self {
        ObjectEntries {
            input,
            buf: Vec::with_capacity(CHUNK),
            start: 0,
            base: Position { offset: 0, line: 1 },
            eof: false,
            state: State::Start,
            high_water: 0,
            check_values: true,
            bytes: 0,
        }
    }

    /// Leaves checking that each value is well-formed JSON to the caller (who parses it anyway), so a
    /// member is parsed once. Structure (brackets, strings, separators) is still checked here.
    pub fn unchecked_values(mut self) -> Self {
        self.check_values = false;
        self
    }

    /// The most bytes the buffer ever held.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    async fn fill(&mut self) -> Result<bool, SyntaxError> {
        if self.eof {
            return Ok(false);
        }
        self.buf.drain(..self.start);
        self.start = 0;
        let start = self.buf.len();
        self.buf.resize(start + CHUNK, 0);
        let n = self
            .input
            .read(&mut self.buf[start..])
            .await
            .map_err(|e| SyntaxError { at: self.pos(start), reason: format!("read error: {e}") })?;
        self.buf.truncate(start + n);
        self.high_water = self.high_water.max(self.buf.len());
        self.bytes += n as u64;
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// The unread bytes.
    fn unread(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The absolute position of `unread()[i]`.
    fn pos(&self, i: usize) -> Position {
        let b = self.unread();
        let lines = b[..i.min(b.len())].iter().filter(|b| **b == b'\n').count() as u64;
        Position { offset: self.base.offset + i as u64, line: self.base.line + lines }
    }

    fn consume(&mut self, n: usize) {
        self.base = self.pos(n);
        self.start += n;
    }

    /// The next member, `None` after the closing brace.
    pub async fn next(&mut self) -> Result<Option<Entry>, SyntaxError> {
        loop {
            match self.scan() {
                Scan::Entry { key, value, next, at } => {
                    let at = self.pos(at);
                    let key: String = serde_json::from_slice(&self.unread()[key.0..key.1])
                        .map_err(|e| SyntaxError { at, reason: format!("bad key: {e}") })?;
                    let value = Bytes::copy_from_slice(&self.unread()[value.0..value.1]);
                    if self.check_values
                        && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&value)
                    {
                        let at = Position { offset: at.offset, line: at.line + e.line() as u64 - 1 };
                        return Err(SyntaxError { at, reason: format!("malformed value of {key:?}: {e}") });
                    }
                    self.consume(next);
                    self.state = State::NextMember;
                    return Ok(Some(Entry { key, value, at }));
                }
                Scan::End { next } => {
                    self.consume(next);
                    self.state = State::Done;
                }
                Scan::Skip { next, state } => {
                    self.consume(next);
                    self.state = state;
                }
                Scan::Error { at, reason } => return Err(SyntaxError { at: self.pos(at), reason }),
                Scan::NeedMore => {
                    if self.unread().len() > MAX_ENTRY {
                        return Err(SyntaxError {
                            at: self.pos(0),
                            reason: format!("a member is larger than {MAX_ENTRY} bytes"),
                        });
                    }
                    if !self.fill().await? {
                        if self.state == State::Done {
                            return Ok(None);
                        }
                        let at = self.pos(self.unread().len());
                        return Err(SyntaxError { at, reason: "unexpected end of input (truncated file?)".into() });
                    }
                }
            }
        }
    }

    /// One step over the buffer from its start, without reading.
    fn scan(&self) -> Scan {
        let b = self.unread();
        let mut i = skip_ws(b, 0);
        if i == b.len() {
            return Scan::NeedMore;
        }
        match self.state {
            State::Start => match b[i] {
                b'{' => Scan::Skip { next: i + 1, state: State::FirstMember },
                c => Scan::Error {
                    at: i,
                    reason: format!("expected '{{' (an object keyed by UN/LOCODE), found {:?}", c as char),
                },
            },
            State::Done => Scan::Error { at: i, reason: "unexpected data after the closing '}'".into() },
            State::FirstMember | State::NextMember => {
                if b[i] == b'}' {
                    return Scan::End { next: i + 1 };
                }
                if self.state == State::NextMember {
                    if b[i] != b',' {
                        return Scan::Error {
                            at: i,
                            reason: format!("expected ',' or '}}', found {:?}", b[i] as char),
                        };
                    }
                    i = skip_ws(b, i + 1);
                    if i == b.len() {
                        return Scan::NeedMore;
                    }
                }
                let at = i;
                if b[i] != b'"' {
                    return Scan::Error {
                        at: i,
                        reason: format!("expected a key in quotes, found {:?}", b[i] as char),
                    };
                }
                let Some(key_end) = string_end(b, i) else { return Scan::NeedMore };
                let j = skip_ws(b, key_end);
                if j == b.len() {
                    return Scan::NeedMore;
                }
                if b[j] != b':' {
                    return Scan::Error {
                        at: j,
                        reason: format!("expected ':' after a key, found {:?}", b[j] as char),
                    };
                }
                let v = skip_ws(b, j + 1);
                if v == b.len() {
                    return Scan::NeedMore;
                }
                match value_end(b, v) {
                    Ok(Some(end)) => Scan::Entry { key: (i, key_end), value: (v, end), next: end, at },
                    Ok(None) => Scan::NeedMore,
                    Err((pos, reason)) => Scan::Error { at: pos, reason },
                }
            }
        }
    }
}

enum Scan {
    NeedMore,
    Skip { next: usize, state: State },
    Entry { key: (usize, usize), value: (usize, usize), next: usize, at: usize },
    End { next: usize },
    Error { at: usize, reason: String },
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index after the closing quote of the string starting at `i`, if it is complete.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// The index after the JSON value starting at `i`, if it is complete; brackets must balance.
fn value_end(b: &[u8], i: usize) -> Result<Option<usize>, (usize, String)> {
    match b[i] {
        b'"' => Ok(string_end(b, i)),
        b'{' | b'[' => {
            let mut stack = Vec::new();
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => match string_end(b, j) {
                        Some(e) => {
                            j = e;
                            continue;
                        }
                        None => return Ok(None),
                    },
                    c @ (b'{' | b'[') => stack.push(if c == b'{' { b'}' } else { b']' }),
                    c @ (b'}' | b']') => {
                        if stack.pop() != Some(c) {
                            return Err((j, format!("unbalanced {:?}", c as char)));
                        }
                        if stack.is_empty() {
                            return Ok(Some(j + 1));
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Ok(None)
        }
        _ => {
            // A number or a literal: up to the next delimiter (the end of the buffer may cut it).
            let end = (i..b.len()).find(|&j| matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
            Ok(end)
        }
    }
}
