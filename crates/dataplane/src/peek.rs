//! Reading a connection's ClientHello without losing it.
//!
//! On a socket with TLS passthrough listeners, the SNI decides where a connection goes
//! before any TLS is spoken back. [`read_client_hello`] buffers the client's first bytes
//! until they hold a whole ClientHello (however many TCP segments it takes), with a bound on
//! both the bytes and the time. The buffered bytes are then either written to the
//! passthrough backend first, or replayed to the TLS terminator through [`Rewind`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use ir::Hostname;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::sni::{self, InvalidClientHello, Parsed};

/// The most bytes buffered while waiting for a ClientHello: the largest one accepted plus
/// room for the headers of the records it may be split into.
pub const MAX_BUFFERED: usize = sni::MAX_CLIENT_HELLO + 1024;

/// A ClientHello read off a connection.
#[derive(Debug)]
pub struct ClientHello {
    /// Every byte read so far, the ClientHello and anything the client sent right after it.
    pub bytes: Bytes,
    /// Its SNI, normalised; `None` when the client sent none.
    pub server_name: Option<Hostname>,
}

/// Why no ClientHello could be read. Only that connection is affected.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    /// The client did not send a whole ClientHello within `Options::client_hello_timeout`.
    #[error("no ClientHello within the timeout ({received} bytes received)")]
    Timeout {
        /// Bytes received until then.
        received: usize,
    },
    /// The client closed the connection before its ClientHello was complete.
    #[error("connection closed before a whole ClientHello ({received} bytes received)")]
    Closed {
        /// Bytes received until then.
        received: usize,
    },
    /// [`MAX_BUFFERED`] bytes arrived and they are still not a whole ClientHello.
    #[error("no whole ClientHello in the first {MAX_BUFFERED} bytes")]
    TooLarge,
    /// The bytes are not a ClientHello that can be routed.
    #[error(transparent)]
    Invalid(#[from] InvalidClientHello),
    /// Reading failed.
    #[error("reading the ClientHello failed")]
    Io(#[from] io::Error),
}

/// Reads until `stream` has delivered a whole ClientHello, for at most `limit`.
pub async fn read_client_hello<S>(stream: &mut S, limit: Duration) -> Result<ClientHello, PeekError>
where
    S: AsyncRead + Unpin,
{
    let mut bytes = Vec::with_capacity(2048);
    match tokio::time::timeout(limit, read_until_parsed(stream, &mut bytes)).await {
        Ok(Ok(server_name)) => Ok(ClientHello {
            bytes: bytes.into(),
            server_name,
        }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(PeekError::Timeout {
            received: bytes.len(),
        }),
    }
}

/// A stream that first yields `prefix`, then reads from the inner stream. Writes go to the
/// inner stream unchanged.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

// === impl Rewind ===

impl<S> Rewind<S> {
    /// Replays `prefix` before whatever `inner` delivers next.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let count = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..count]);
        self.prefix.advance(count);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === helpers ===

/// Reads into `bytes` until they parse as a whole ClientHello; returns its SNI.
async fn read_until_parsed<S>(
    stream: &mut S,
    bytes: &mut Vec<u8>,
) -> Result<Option<Hostname>, PeekError>
where
    S: AsyncRead + Unpin,
{
    loop {
        let room = MAX_BUFFERED.saturating_sub(bytes.len());
        if room == 0 {
            return Err(PeekError::TooLarge);
        }
        let room = u64::try_from(room).unwrap_or(u64::MAX);
        let read = (&mut *stream).take(room).read_buf(bytes).await?;
        if read == 0 {
            return Err(PeekError::Closed {
                received: bytes.len(),
            });
        }
        match sni::parse(bytes)? {
            Parsed::Incomplete => {}
            Parsed::Complete { server_name } => return Ok(server_name),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    /// The start of a ClientHello for `name`, built by hand: record, handshake and
    /// ClientHello headers, then the `server_name` extension.
    fn hello(name: &str) -> Vec<u8> {
        let name = name.as_bytes();
        let len = |n: usize| u16::try_from(n).expect("small").to_be_bytes();
        let mut sni = len(name.len() + 3).to_vec();
        sni.push(0);
        sni.extend(len(name.len()));
        sni.extend(name);
        let mut extensions = vec![0, 0];
        extensions.extend(len(sni.len()));
        extensions.extend(sni);
        let mut body = vec![3, 3];
        body.extend([0; 32]);
        body.extend([0, 0, 2, 0x13, 1, 1, 0]);
        body.extend(len(extensions.len()));
        body.extend(extensions);
        let mut message = vec![1, 0];
        message.extend(len(body.len()));
        message.extend(body);
        let mut record = vec![22, 3, 1];
        record.extend(len(message.len()));
        record.extend(message);
        record
    }

    #[tokio::test]
    async fn a_hello_in_pieces_is_assembled_and_kept() {
        let hello = hello("pieces.example.com");
        let (mut client, mut server) = duplex(64);
        let sent = hello.clone();
        let sending = tokio::spawn(async move {
            for piece in sent.chunks(7) {
                client.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let read = read_client_hello(&mut server, Duration::from_secs(5))
            .await
            .expect("a whole hello");
        assert_eq!(
            read.server_name.as_ref().map(Hostname::as_str),
            Some("pieces.example.com")
        );
        assert_eq!(&read.bytes[..], &hello[..]);
        sending.await.expect("sending task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_times_out() {
        let hello = hello("slow.example.com");
        let (mut client, mut server) = duplex(1024);
        client.write_all(&hello[..10]).await.expect("write");
        let error = read_client_hello(&mut server, Duration::from_secs(10)).await;
        assert!(matches!(error, Err(PeekError::Timeout { received: 10 })));
    }

    #[tokio::test]
    async fn closing_early_garbage_and_endless_records_are_errors() {
        let hello = hello("x.example.com");
        let (mut client, mut server) = duplex(1024);
        client.write_all(&hello[..20]).await.expect("write");
        drop(client);
        let error = read_client_hello(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(error, Err(PeekError::Closed { received: 20 })));

        let (mut client, mut server) = duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let error = read_client_hello(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(
            error,
            Err(PeekError::Invalid(InvalidClientHello::NotTls))
        ));

        // A ClientHello of almost 16 KiB, sent in one-byte records, never fits the buffer.
        let (mut client, mut server) = duplex(64 * 1024);
        let writing = tokio::spawn(async move {
            let _ = client.write_all(&[22, 3, 1, 0, 4, 1, 0, 0x3f, 0xf0]).await;
            for _ in 0..MAX_BUFFERED {
                if client.write_all(&[22, 3, 1, 0, 1, 0]).await.is_err() {
                    break;
                }
            }
        });
        let error = read_client_hello(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(error, Err(PeekError::TooLarge)), "{error:?}");
        drop(server);
        writing.await.expect("writer task");
    }

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on_and_writes_through() {
        let (mut peer, inner) = duplex(1024);
        let mut rewound = Rewind::new(Bytes::from_static(b"hello "), inner);
        peer.write_all(b"world").await.expect("write");
        peer.shutdown().await.expect("shutdown");
        let mut small = [0; 4];
        let read = rewound.read(&mut small).await.expect("read");
        assert_eq!(&small[..read], b"hell");
        let mut rest = Vec::new();
        let mut reading = rewound;
        reading.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"o world");
        reading.write_all(b"back").await.expect("write");
        let mut echoed = [0; 4];
        peer.read_exact(&mut echoed).await.expect("read");
        assert_eq!(&echoed, b"back");
    }
}
