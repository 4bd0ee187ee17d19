//! The event stream's framing: one Server-Sent Event per downstream
//! message, and a decoder of the stream for clients and tests.

/// `Content-Type` of the event stream.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";
/// `Cache-Control` of the event stream (as chain sends it).
pub const SSE_CACHE_CONTROL: &str = "private, no-cache, no-store, must-revalidate, max-age=0";

/// One SSE event carrying `json` (which is a single line: compact JSON).
pub fn sse_event(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 8);
    out.push_str("data: ");
    out.push_str(json);
    out.push_str("\n\n");
    out
}

/// Splits an event stream into the `data` of each event (for clients and
/// tests). Follows the SSE rules that matter here: lines end with `\n`,
/// `\r\n` or `\r`; an empty line ends an event; several `data` lines are
/// joined with `\n`; comments and other fields are ignored.
#[derive(Debug, Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    data: Option<String>,
    last_id: Option<String>,
}

impl SseDecoder {
    pub fn new() -> SseDecoder {
        SseDecoder::default()
    }

    /// The last `id` field seen (what a client sends as `Last-Event-ID`
    /// when it reconnects).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feed bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A `\r` at the very end may be half of `\r\n`: wait for more.
            if self.pending[end] == b'\r' && end + 1 == self.pending.len() {
                break;
            }
            let skip = if self.pending[end] == b'\r' && self.pending.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.pending.drain(..end + skip).take(end).collect();
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push(data);
                }
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(0) => continue,
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (&line[..], ""),
            };
            if field == "id" && !value.contains('\0') {
                self.last_id = Some(value.to_string());
            }
            if field == "data" {
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
            }
        }
        events
    }
}
