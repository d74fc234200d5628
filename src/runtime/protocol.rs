//! The framing between the controller and an instance. Each frame is a
//! 4-byte big-endian header length, a 4-byte big-endian body length, the
//! header as JSON, then the body as raw bytes. The body carries the payload,
//! so invalid UTF-8 and NUL bytes travel unchanged; the header carries the
//! rest of the data object. The same framing runs over the local socket pair
//! and over TCP.
//!
//! Frames from the instance: first `{"ready": true}` once the script is
//! loaded, then one reply per call, in order, each echoing the call's `id`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest header accepted from an instance; a bigger one means the
/// instance is not speaking this protocol.
const MAX_HEADER_BYTES: u32 = 64 * 1024 * 1024;

/// The header of a call sent to an instance. It borrows the call's data,
/// which is serialized straight into the frame.
#[derive(Debug, Serialize)]
pub struct CallHeader<'a> {
    pub id: u64,
    pub has_payload: bool,
    pub variables: &'a Map<String, Value>,
    pub meta: &'a Map<String, Value>,
    pub flow: &'a Value,
    /// The HTTP request of a raw HTTP call: method, path, query, headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<&'a Value>,
}

/// The header of any frame an instance sends: the ready frame or a reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceHeader {
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub has_payload: bool,
    pub variables: Option<Map<String, Value>>,
    pub meta: Option<Map<String, Value>>,
    pub flow: Option<Value>,
    pub logs: Option<Vec<String>>,
    /// The response a raw HTTP call sets: status and headers.
    pub response: Option<Value>,
    pub error: Option<ScriptFailure>,
}

/// An exception raised by the script's handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptFailure {
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
    /// The stack trace, as the language prints it.
    pub traceback: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid frame header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("frame header of {0} bytes is over the limit")]
    HeaderTooLarge(u32),
    #[error("frame body of {0} bytes does not fit in memory on this platform")]
    BodyTooLarge(u32),
}

/// Bodies up to this size go out in the same write as the prefix and the
/// header, so a typical call is one system call and wakes the instance once.
/// Larger bodies are written separately instead of being copied.
const SINGLE_WRITE_BODY_BYTES: usize = 64 * 1024;

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    header: &impl Serialize,
    body: &[u8],
) -> Result<(), FrameError> {
    let body_length = u32::try_from(body.len()).map_err(|_| FrameError::BodyTooLarge(u32::MAX))?;
    let single_write = body.len() <= SINGLE_WRITE_BODY_BYTES;
    let mut frame = Vec::with_capacity(512 + if single_write { body.len() } else { 0 });
    frame.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut frame, header)?;
    let header_length = (frame.len() - 8) as u32;
    frame[..4].copy_from_slice(&header_length.to_be_bytes());
    frame[4..8].copy_from_slice(&body_length.to_be_bytes());
    if single_write {
        frame.extend_from_slice(body);
        writer.write_all(&frame).await?;
    } else {
        writer.write_all(&frame).await?;
        writer.write_all(body).await?;
    }
    writer.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(InstanceHeader, Vec<u8>), FrameError> {
    let mut prefix = [0u8; 8];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(error) => return Err(error.into()),
    }
    let header_length = u32::from_be_bytes(prefix[..4].try_into().expect("4 bytes"));
    let body_length = u32::from_be_bytes(prefix[4..].try_into().expect("4 bytes"));
    if header_length > MAX_HEADER_BYTES {
        return Err(FrameError::HeaderTooLarge(header_length));
    }
    let mut header = vec![0; header_length as usize];
    read_exact_or_closed(reader, &mut header).await?;
    let mut body = vec![0; usize::try_from(body_length).map_err(|_| FrameError::BodyTooLarge(body_length))?];
    read_exact_or_closed(reader, &mut body).await?;
    Ok((serde_json::from_slice(&header)?, body))
}

async fn read_exact_or_closed<R: AsyncRead + Unpin>(reader: &mut R, buffer: &mut [u8]) -> Result<(), FrameError> {
    match reader.read_exact(buffer).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Closed),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip_keeps_binary_body() {
        let (mut left, mut right) = tokio::io::duplex(1024);
        let body = b"\x00\xff\xfe not utf-8 \x00".to_vec();
        let header = InstanceHeader { id: 7, ok: true, has_payload: true, ..Default::default() };
        write_frame(&mut left, &header, &body).await.unwrap();
        let (read_header, read_body) = read_frame(&mut right).await.unwrap();
        assert_eq!(read_header.id, 7);
        assert!(read_header.has_payload);
        assert_eq!(read_body, body);
        drop(left);
        assert!(matches!(read_frame(&mut right).await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn frame_round_trip_keeps_large_body() {
        let (mut left, mut right) = tokio::io::duplex(1024 * 1024);
        let body: Vec<u8> = (0..SINGLE_WRITE_BODY_BYTES + 1).map(|index| index as u8).collect();
        let header = InstanceHeader { id: 8, ok: true, has_payload: true, ..Default::default() };
        let writer = tokio::spawn(async move { write_frame(&mut left, &header, &body).await.map(|_| body) });
        let (read_header, read_body) = read_frame(&mut right).await.unwrap();
        let body = writer.await.unwrap().unwrap();
        assert_eq!(read_header.id, 8);
        assert_eq!(read_body, body);
    }
}
