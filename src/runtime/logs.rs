//! Bounded capture of a script's stdout and stderr. Lines longer than
//! [`MAX_LINE_BYTES`] are cut, and each script keeps only its newest lines,
//! so endless output cannot exhaust the server's memory.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::store::Secrets;

pub const MAX_LINE_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub at_ms: u64,
    pub instance: u64,
    pub stream: &'static str,
    pub text: String,
}

/// The newest log lines of one script, across its instances.
pub struct LogBuffer {
    lines: Mutex<VecDeque<LogLine>>,
    max_lines: usize,
}

impl LogBuffer {
    pub fn new(max_lines: usize) -> LogBuffer {
        LogBuffer { lines: Mutex::new(VecDeque::new()), max_lines }
    }

    pub fn push(&self, line: LogLine) {
        let mut lines = self.lines.lock().expect("log buffer poisoned");
        if lines.len() == self.max_lines {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn snapshot(&self) -> Vec<LogLine> {
        self.lines.lock().expect("log buffer poisoned").iter().cloned().collect()
    }

    /// Returns the last `count` lines one instance wrote to `stream`.
    pub fn tail(&self, instance: u64, stream: &str, count: usize) -> Vec<String> {
        let lines = self.lines.lock().expect("log buffer poisoned");
        let mut tail: Vec<String> = lines
            .iter()
            .rev()
            .filter(|line| line.instance == instance && line.stream == stream)
            .take(count)
            .map(|line| line.text.clone())
            .collect();
        tail.reverse();
        tail
    }
}

/// The destination of an instance's output: the script's buffer, with the script's
/// secrets masked. A prewarmed instance gets its script's target when it is
/// handed a script, so the target can change while the instance runs.
#[derive(Clone)]
pub struct LogTarget(std::sync::Arc<std::sync::RwLock<(std::sync::Arc<LogBuffer>, Secrets)>>);

impl LogTarget {
    pub fn new(buffer: std::sync::Arc<LogBuffer>, secrets: Secrets) -> LogTarget {
        LogTarget(std::sync::Arc::new(std::sync::RwLock::new((buffer, secrets))))
    }

    pub fn set(&self, buffer: std::sync::Arc<LogBuffer>, secrets: Secrets) {
        *self.0.write().expect("log target poisoned") = (buffer, secrets);
    }

    pub fn buffer(&self) -> std::sync::Arc<LogBuffer> {
        self.0.read().expect("log target poisoned").0.clone()
    }

    pub fn mask(&self, text: &str) -> String {
        self.0.read().expect("log target poisoned").1.mask(text)
    }
}

/// Reads `reader` to its end, pushing each line into the target's buffer
/// with the values of its secrets masked. A line over [`MAX_LINE_BYTES`] is
/// cut there and marked; the rest of it is skipped.
pub async fn capture_lines(mut reader: impl AsyncRead + Unpin, target: LogTarget, instance: u64, stream: &'static str) {
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut skipped: u64 = 0;
    let mut chunk = vec![0u8; 16 * 1024];
    let emit = |line: &mut Vec<u8>, skipped: &mut u64| {
        let text = String::from_utf8_lossy(line);
        let guard = target.0.read().expect("log target poisoned");
        let (buffer, secrets) = &*guard;
        let mut text = if *skipped > 0 { secrets.mask_cut(&text) } else { secrets.mask(&text) };
        if *skipped > 0 {
            text.push_str(&format!(" [line cut: {} more bytes]", *skipped));
        }
        buffer.push(LogLine { at_ms: crate::store::now_ms(), instance, stream, text });
        line.clear();
        *skipped = 0;
    };
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        for &byte in &chunk[..read] {
            if byte == b'\n' {
                emit(&mut line, &mut skipped);
            } else if line.len() < MAX_LINE_BYTES {
                line.push(byte);
            } else {
                skipped += 1;
            }
        }
    }
    if !line.is_empty() || skipped > 0 {
        emit(&mut line, &mut skipped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn long_lines_are_cut_and_buffer_is_bounded() {
        let buffer = Arc::new(LogBuffer::new(3));
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend(b"\nlast");
        capture_lines(&input[..], LogTarget::new(buffer.clone(), Secrets::default()), 1, "stdout").await;
        let lines = buffer.snapshot();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].text, "two");
        assert!(lines[1].text.ends_with(" [line cut: 10 more bytes]"));
        assert_eq!(lines[1].text.len(), MAX_LINE_BYTES + " [line cut: 10 more bytes]".len());
        assert_eq!(lines[2].text, "last");
    }

    #[tokio::test]
    async fn secret_values_are_masked() {
        let buffer = Arc::new(LogBuffer::new(10));
        let secrets = Secrets([("TOKEN".to_string(), "hunter2".to_string())].into());
        capture_lines(&b"token is hunter2\nbye"[..], LogTarget::new(buffer.clone(), secrets), 1, "stderr").await;
        let lines: Vec<String> = buffer.snapshot().into_iter().map(|line| line.text).collect();
        assert_eq!(lines, ["token is ***", "bye"]);
    }
}
