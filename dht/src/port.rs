//! Dials that survive a listening port taken elsewhere.
//!
//! libp2p-tcp dials from the listening port, so that the peer sees the address this node
//! listens at, by binding the wildcard address at that port. That bind fails ("address
//! already in use") while any other socket holds the port on another local address
//! without allowing reuse: a node listening on 127.0.0.1:4001 while some program's
//! connection from 127.0.0.2:4001 lingers in TIME_WAIT, say. libp2p-tcp then dials again
//! from a new port only when the address is not available, not when it is in use, so
//! every dial from the listening port fails until that socket is gone: bootstrap,
//! Kademlia's and identify's dials alike. [`NewPortWhenTaken`] dials once more from a port
//! of its own when a dial from the listening port fails so. (A transport that does not
//! listen, as the stream swarm's dialling one, always dials from a new port.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::core::Transport;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p::{Multiaddr, tcp};

/// libp2p-tcp's tokio transport, whose dials from the listening port are made again from
/// a new port when the listening port cannot be bound for them.
#[allow(missing_debug_implementations)] // libp2p-tcp's transport implements no Debug
pub(crate) struct NewPortWhenTaken {
    inner: tcp::tokio::Transport,
    config: tcp::Config,
}

impl NewPortWhenTaken {
    /// A TCP transport with `config`.
    pub(crate) fn new(config: tcp::Config) -> Self {
        NewPortWhenTaken {
            inner: tcp::tokio::Transport::new(config.clone()),
            config,
        }
    }
}

impl Transport for NewPortWhenTaken {
    type Output = tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = <tcp::tokio::Transport as Transport>::ListenerUpgrade;
    type Dial = BoxFuture<'static, Result<Self::Output, io::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let first = self.inner.dial(addr.clone(), opts)?;
        if opts.port_use == PortUse::New {
            return Ok(first.boxed());
        }
        let config = self.config.clone();
        Ok(async move {
            match first.await {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    tracing::debug!(%addr, "the listening port is taken for dialling; dialling from a new port");
                    // A dial from a new port needs none of the listeners' state: a
                    // transport of its own makes it.
                    let fresh = DialOpts {
                        port_use: PortUse::New,
                        ..opts
                    };
                    match tcp::tokio::Transport::new(config).dial(addr, fresh) {
                        Ok(dial) => dial.await,
                        Err(TransportError::Other(e)) => Err(e),
                        Err(TransportError::MultiaddrNotSupported(_)) => Err(e),
                    }
                }
                outcome => outcome,
            }
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use libp2p::core::Endpoint;
    use libp2p::core::multiaddr::Protocol;

    use super::*;

    /// A TCP transport listening on 127.0.0.1 at a port another socket holds on
    /// 127.0.0.2, and the address it listens at once it does.
    async fn listening_where_taken<T: Transport + Unpin>(
        mut transport: T,
        port: u16,
    ) -> (T, Multiaddr) {
        let at = Multiaddr::from(Ipv4Addr::LOCALHOST).with(Protocol::Tcp(port));
        transport.listen_on(ListenerId::next(), at).unwrap();
        loop {
            let event = futures::future::poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await;
            if let TransportEvent::NewAddress { listen_addr, .. } = event {
                return (transport, listen_addr);
            }
        }
    }

    const FROM_LISTENING_PORT: DialOpts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::Reuse,
    };

    // 127.0.0.2 is a loopback address of its own on Linux (not on macOS, say).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_dial_from_a_listening_port_taken_elsewhere_goes_out_from_a_new_port() {
        let elsewhere = tokio::net::TcpSocket::new_v4().unwrap();
        elsewhere
            .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0)))
            .unwrap();
        let port = elsewhere.local_addr().unwrap().port();
        let peer = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let peer_addr = Multiaddr::from(Ipv4Addr::LOCALHOST)
            .with(Protocol::Tcp(peer.local_addr().unwrap().port()));
        // libp2p-tcp alone: the dial binds 0.0.0.0 at the port and fails.
        let plain = tcp::tokio::Transport::new(tcp::Config::default());
        let (mut plain, _) = listening_where_taken(plain, port).await;
        let error = plain
            .dial(peer_addr.clone(), FROM_LISTENING_PORT)
            .unwrap()
            .await
            .expect_err("the port is taken elsewhere");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
        drop(plain);

        // Wrapped: the same dial connects, from another port.
        let wrapped = NewPortWhenTaken::new(tcp::Config::default());
        let (mut wrapped, _) = listening_where_taken(wrapped, port).await;
        let stream = wrapped
            .dial(peer_addr.clone(), FROM_LISTENING_PORT)
            .unwrap()
            .await
            .expect("dialled from a new port");
        let (_, from) = peer.accept().await.unwrap();
        assert_eq!(from.ip(), Ipv4Addr::LOCALHOST);
        assert_ne!(from.port(), port);
        drop(stream);

        // With the port free, a dial goes out from the listening port, as before.
        drop(elsewhere);
        let _stream = wrapped
            .dial(peer_addr, FROM_LISTENING_PORT)
            .unwrap()
            .await
            .expect("dialled from the listening port");
        let (_, from) = peer.accept().await.unwrap();
        assert_eq!(from.port(), port);
    }
}
