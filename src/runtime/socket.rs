//! The server's end of an instance's socket pair, registered with the
//! event loop for reading only.
//!
//! A Unix stream socket signals "writable" to its peer's waiters each time
//! the instance reads a frame. A socket registered for both directions
//! (as `tokio::net::UnixStream` is) therefore wakes the server once more
//! per call, for nothing: a frame almost always fits in the socket buffer
//! and is written at once. Here the writer tries the write first and only
//! waits for space, through a temporary registration of a duplicate of the
//! socket, when the buffer is full (large payloads).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, Interest, ReadBuf};

/// Read-ahead of the reading half: one read takes a typical reply's
/// lengths, header and body together.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Splits a connected socket into its reading and writing halves.
pub fn split(stream: UnixStream) -> std::io::Result<(BufReader<SocketReader>, SocketWriter)> {
    stream.set_nonblocking(true)?;
    // SAFETY: a `UnixStream` owns its fd and returns that same fd for its
    // whole life, which ends with the `AsyncFd` that takes it here.
    let socket = Arc::new(unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }?);
    let reader = SocketReader { socket: socket.clone() };
    Ok((BufReader::with_capacity(READ_BUFFER_BYTES, reader), SocketWriter { socket, space_waiter: None }))
}

pub struct SocketReader {
    socket: Arc<AsyncFd<UnixStream>>,
}

impl AsyncRead for SocketReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.socket.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let requested = unfilled.len();
            match guard.try_io(|socket| socket.get_ref().read(unfilled)) {
                Ok(Ok(read)) => {
                    // A short read emptied the socket: forget the readiness
                    // now instead of learning it from one more read that
                    // fails. Data that arrives later raises a new event.
                    if read > 0 && read < requested {
                        guard.clear_ready();
                    }
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                // The readiness was stale and is now cleared, so wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

pub struct SocketWriter {
    socket: Arc<AsyncFd<UnixStream>>,
    /// A duplicate of the socket registered for writing, present only while
    /// a write waits for buffer space. Flushing drops and deregisters it.
    space_waiter: Option<tokio::net::UnixStream>,
}

impl AsyncWrite for SocketWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.space_waiter.is_none() {
            match self.socket.get_ref().write(data) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    let duplicate = self.socket.get_ref().try_clone()?;
                    self.space_waiter = Some(tokio::net::UnixStream::from_std(duplicate)?);
                }
                result => return Poll::Ready(result),
            }
        }
        let waiter = self.space_waiter.as_mut().expect("the waiter was just set");
        Pin::new(waiter).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Writes go straight to the socket, so there is nothing to flush.
        self.space_waiter = None;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::split;

    /// A write larger than the socket buffer waits for the peer to read,
    /// and every byte arrives in order.
    #[tokio::test]
    async fn large_writes_wait_for_space_and_arrive_whole() {
        let (server, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let (_reader, mut writer) = split(server).unwrap();
        let (mut peer_reader, _peer_writer) = split(peer).unwrap();
        let sent: Vec<u8> = (0..8 * 1024 * 1024).map(|index: u32| (index % 251) as u8).collect();
        let expected = sent.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.flush().await.unwrap();
            writer.write_all(b"end").await.unwrap();
        });
        let mut received = vec![0; expected.len() + 3];
        peer_reader.read_exact(&mut received).await.unwrap();
        writing.await.unwrap();
        assert_eq!(&received[..expected.len()], &expected[..]);
        assert_eq!(&received[expected.len()..], b"end");
    }

    #[tokio::test]
    async fn reading_after_the_peer_closes_ends_the_stream() {
        let (server, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut reader, _writer) = split(server).unwrap();
        drop(peer);
        let mut rest = Vec::new();
        assert_eq!(reader.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
