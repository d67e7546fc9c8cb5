//! The byte stream under a MySQL connection: plain TCP, or TLS once the connection upgraded
//! in-protocol (after the SSL request packet, on either side of Sluice).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream with bytes already read from it put back in front: a client may send its TLS
/// hello right behind the SSL request, before Sluice has looked at either.
#[derive(Debug)]
pub struct Prefixed {
    prefix: BytesMut,
    tcp: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Gives the memory back: the connection may live for hours.
                self.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The stream a [`super::codec::PacketStream`] reads and writes.
#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    /// A client connection Sluice accepted TLS on.
    ServerTls(Box<tokio_rustls::server::TlsStream<Prefixed>>),
    /// A backend connection Sluice started TLS on.
    ClientTls(Box<tokio_rustls::client::TlsStream<Prefixed>>),
    /// Between taking the plain stream and finishing a TLS handshake that failed.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection lost in a TLS upgrade",
    )
}

impl Transport {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Transport::Plain(t) => Some(t),
            Transport::ServerTls(t) => Some(&t.get_ref().0.tcp),
            Transport::ClientTls(t) => Some(&t.get_ref().0.tcp),
            Transport::Gone => None,
        }
    }

    /// True once TLS is on.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::ServerTls(_) | Transport::ClientTls(_))
    }

    /// Whether a client Sluice accepted TLS from presented a certificate (which the
    /// handshake verified).
    pub fn client_certificate_presented(&self) -> bool {
        match self {
            Transport::ServerTls(t) => t
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty()),
            _ => false,
        }
    }

    /// The negotiated TLS version, for logs and metrics.
    pub fn tls_version(&self) -> Option<&'static str> {
        let v = match self {
            Transport::ServerTls(t) => t.get_ref().1.protocol_version(),
            Transport::ClientTls(t) => t.get_ref().1.protocol_version(),
            _ => None,
        }?;
        Some(match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        })
    }

    /// Takes the plain stream out for an upgrade, with `prefix` put back in front of it.
    fn take_plain(&mut self, prefix: BytesMut) -> io::Result<Prefixed> {
        match std::mem::replace(self, Transport::Gone) {
            Transport::Plain(tcp) => Ok(Prefixed { prefix, tcp }),
            other => {
                *self = other;
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is already on for this connection",
                ))
            }
        }
    }

    /// Accepts TLS from a client on what was a plain connection.
    pub async fn accept_tls(
        &mut self,
        prefix: BytesMut,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> io::Result<()> {
        let io = self.take_plain(prefix)?;
        *self = Transport::ServerTls(Box::new(acceptor.accept(io).await?));
        Ok(())
    }

    /// Starts TLS towards a server on what was a plain connection.
    pub async fn connect_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let io = self.take_plain(BytesMut::new())?;
        *self = Transport::ClientTls(Box::new(connector.connect(name, io).await?));
        Ok(())
    }

    /// Waits until a read would find data, without allocating a buffer for it.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(t) => t.readable().await,
            Transport::ServerTls(t) => {
                let (io, conn) = t.get_mut();
                tls_readable(io, conn).await
            }
            Transport::ClientTls(t) => {
                let (io, conn) = t.get_mut();
                tls_readable(io, conn).await
            }
            Transport::Gone => Err(gone()),
        }
    }

    /// True if the peer closed or sent bytes nobody asked for; looks at the socket without
    /// waiting or consuming anything. Only backend connections are asked, whose TLS upgrade
    /// leaves nothing in front of the socket.
    pub fn has_unread_or_closed(&self) -> bool {
        let Some(tcp) = self.tcp() else {
            return true;
        };
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        match tcp.poll_peek(&mut cx, &mut buf) {
            Poll::Pending => false,
            Poll::Ready(Ok(_)) => true,
            Poll::Ready(Err(_)) => true,
        }
    }
}

/// [`Transport::readable`] for TLS: decrypted bytes may wait in rustls (or bytes in front of
/// the socket) that the socket no longer shows.
async fn tls_readable<D>(
    io: &mut Prefixed,
    conn: &mut rustls::ConnectionCommon<D>,
) -> io::Result<()> {
    let state = conn
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if !io.prefix.is_empty() || state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
        return Ok(());
    }
    io.tcp.readable().await
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Transport::Plain($s) => $e,
            Transport::ServerTls($s) => $e,
            Transport::ClientTls($s) => $e,
            Transport::Gone => Poll::Ready(Err(gone())),
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The bytes put back come first, and their buffer is freed once they are read: a TLS
    /// connection keeps its `Prefixed` for as long as it lasts.
    #[tokio::test]
    async fn prefix_is_read_first_then_freed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut big = BytesMut::with_capacity(16 * 1024);
        big.extend_from_slice(b"ahead");
        let mut prefixed = Prefixed { prefix: big, tcp };
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"behind")
            .await
            .unwrap();
        let mut got = [0u8; 11];
        prefixed.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"aheadbehind");
        assert_eq!(prefixed.prefix.capacity(), 0);
    }
}
