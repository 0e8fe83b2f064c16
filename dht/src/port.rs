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
//! of its own when a dial from the listening port fails so.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::Multiaddr;
use libp2p::core::Transport;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};

/// `T` (a TCP transport), whose dials from the listening port are made again from a new
/// port when the listening port cannot be bound for them.
#[derive(Debug)]
pub(crate) struct NewPortWhenTaken<T>(pub(crate) T);

impl<T> Transport for NewPortWhenTaken<T>
where
    T: Transport<Error = io::Error> + Unpin,
    T::Dial: Send + 'static,
    T::Output: Send + 'static,
{
    type Output = T::Output;
    type Error = io::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = BoxFuture<'static, Result<T::Output, io::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        if opts.port_use == PortUse::New {
            return Ok(self.0.dial(addr, opts)?.boxed());
        }
        let first = self.0.dial(addr.clone(), opts)?;
        // Made now, since the future cannot reach the transport later; it is only a socket
        // not yet connected, and is closed unused unless the first attempt fails so.
        let fresh = self
            .0
            .dial(
                addr.clone(),
                DialOpts {
                    port_use: PortUse::New,
                    ..opts
                },
            )
            .ok();
        Ok(async move {
            match (first.await, fresh) {
                (Err(e), Some(fresh)) if e.kind() == io::ErrorKind::AddrInUse => {
                    tracing::debug!(%addr, "the listening port is taken for dialling; dialling from a new port");
                    fresh.await
                }
                (outcome, _) => outcome,
            }
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use libp2p::core::Endpoint;
    use libp2p::core::multiaddr::Protocol;
    use libp2p::tcp;

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
        let tcp = || tcp::tokio::Transport::new(tcp::Config::default());

        // libp2p-tcp alone: the dial binds 0.0.0.0 at the port and fails.
        let (mut plain, _) = listening_where_taken(tcp(), port).await;
        let error = plain
            .dial(peer_addr.clone(), FROM_LISTENING_PORT)
            .unwrap()
            .await
            .expect_err("the port is taken elsewhere");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
        drop(plain);

        // Wrapped: the same dial connects, from another port.
        let (mut wrapped, _) = listening_where_taken(NewPortWhenTaken(tcp()), port).await;
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
