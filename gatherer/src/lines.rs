//! The reading side of the line-oriented imports (NDJSON, CSV, numbers): lines of bounded length from a
//! buffered input, counted as they are read, with the first refused ones kept by position. Each importer
//! only says what a line means.

use crate::Progress;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// The read buffer of a line-oriented import, in bytes: what it holds at most besides its longest line.
pub const READ_BUFFER: usize = 64 * 1024;

/// The most refused lines an import keeps (the rest are counted, not kept).
pub const MAX_ERRORS: usize = 20;

/// A refused line of a line-oriented import: where it starts and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// Offset of the line's first byte in the input, from 0.
    pub byte: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} (byte {}): {}", self.line, self.byte, self.reason)
    }
}

/// What a line-oriented import read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LinesRead {
    /// Bytes and lines read (blank ones included), entries published, lines refused.
    pub progress: Progress,
    /// The first [`MAX_ERRORS`] refused lines, with their line numbers and byte offsets.
    pub errors: Vec<LineError>,
    /// The longest line read, in bytes (of a line too long, the part held).
    pub longest_line: usize,
    /// Why the import ended before the input's end, if it did.
    pub stopped: Option<String>,
}

impl LinesRead {
    /// The most the import held of its input at once, in bytes: its read buffer and its longest line.
    pub fn buffer_peak(&self) -> usize {
        self.longest_line + READ_BUFFER
    }
}

/// Reads an import's lines, holding at most `max` bytes of one: a longer line is read to its end and
/// refused.
pub(crate) struct Lines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
    /// Where the line in hand starts in the input, from 0.
    start: u64,
    /// What has been read so far.
    pub(crate) read: LinesRead,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub(crate) fn new(input: R, max: usize) -> Self {
        let reader = BufReader::with_capacity(READ_BUFFER, input);
        Lines { reader, line: Vec::with_capacity(128), max, start: 0, read: LinesRead::default() }
    }

    /// The next line that fits, counted: its 1-based number and its bytes. `None` at the end of the
    /// input, or when the input cannot be read on (a body cut off or over its size limit; the reason is
    /// then in `read.stopped`).
    pub(crate) async fn next(&mut self) -> Option<(u64, &[u8])> {
        loop {
            let p = &mut self.read.progress;
            let (n, too_long) = match read_line_bounded(&mut self.reader, &mut self.line, self.max).await {
                Ok((0, _)) => return None,
                Ok(read) => read,
                Err(e) => {
                    let why = format!("stopped at line {} (byte {}): read error: {e}", p.entries + 1, p.bytes);
                    self.read.stopped = Some(why);
                    return None;
                }
            };
            self.start = p.bytes;
            p.bytes += n as u64;
            p.entries += 1;
            self.read.longest_line = self.read.longest_line.max(self.line.len());
            if !too_long {
                return Some((p.entries, &self.line));
            }
            self.refuse(format!("line longer than {} bytes", self.max));
        }
    }

    /// Refuses the line in hand, for `reason`.
    pub(crate) fn refuse(&mut self, reason: String) {
        self.read.progress.invalid += 1;
        if self.read.errors.len() < MAX_ERRORS {
            self.read.errors.push(LineError { line: self.read.progress.entries, byte: self.start, reason });
        }
    }
}

/// Reads one line into `line` (cleared first), holding at most `max` bytes of it: a longer line is read
/// to its end and dropped. Returns the bytes read (0 at the end) and whether the line was too long.
async fn read_line_bounded(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    line.clear();
    let mut n = (&mut *reader).take(max as u64 + 1).read_until(b'\n', line).await?;
    if line.len() <= max || line.ends_with(b"\n") {
        return Ok((n, false));
    }
    let mut rest = Vec::new();
    loop {
        rest.clear();
        let m = (&mut *reader).take(max as u64).read_until(b'\n', &mut rest).await?;
        n += m;
        if m == 0 || rest.ends_with(b"\n") {
            return Ok((n, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `input` to its end: the lines that fit, and what was read.
    async fn read_all(input: impl AsyncRead + Unpin, max: usize) -> (Vec<String>, LinesRead) {
        let mut lines = Lines::new(input, max);
        let mut kept = Vec::new();
        while let Some((_, line)) = lines.next().await {
            kept.push(String::from_utf8_lossy(line).into_owned());
        }
        (kept, lines.read)
    }

    #[tokio::test]
    async fn a_line_too_long_is_refused_by_position_and_the_rest_read_on() {
        let input = format!("ab\n{}\n\ncd", "x".repeat(10));
        let (kept, read) = read_all(input.as_bytes(), 4).await;
        assert_eq!(kept, ["ab\n", "\n", "cd"]);
        assert_eq!(read.progress, Progress { bytes: input.len() as u64, entries: 4, published: 0, invalid: 1 });
        assert_eq!(read.errors, [LineError { line: 2, byte: 3, reason: "line longer than 4 bytes".into() }]);
        assert_eq!(read.longest_line, 5, "the part of the long line held");
        assert_eq!(read.stopped, None);
    }

    #[tokio::test]
    async fn an_input_that_cannot_be_read_on_stops_with_its_position() {
        let parts = [Ok(bytes::Bytes::from_static(b"one\ntw")), Err(std::io::Error::other("body cut off"))];
        let input = tokio_util::io::StreamReader::new(futures::stream::iter(parts));
        let (kept, read) = read_all(input, 64).await;
        assert_eq!(kept, ["one\n"]);
        assert_eq!(read.stopped.as_deref(), Some("stopped at line 2 (byte 4): read error: body cut off"));
    }
}
