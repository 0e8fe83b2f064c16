//! The stream swarm: streams of our own protocols on a lean connection of their own,
//! diverted from the overlay's listener on the same port; and what sharing a TCP port
//! asks of the listener (sorting bounded per source) and of dials (from the listening
//! port, or not).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use dht::{Client, Config, Store, Transports};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use keys::SigningKey;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use support::eventually;

const ECHO: StreamProtocol = StreamProtocol::new("/blocktree/test-echo/1.0.0");

struct Node {
    peer: PeerId,
    client: Client,
    addr: Multiaddr,
}

/// A node listening at `listen` (nowhere if empty: it can dial, not be dialled).
async fn spawn(listen: &str, transports: Transports, bootstrap: Option<&Multiaddr>) -> Node {
    let key = SigningKey::generate();
    let config = Config::new()
        .with_listen(
            Some(listen)
                .filter(|l| !l.is_empty())
                .map(|l| l.parse().unwrap())
                .into_iter()
                .collect(),
        )
        .with_bootstrap(bootstrap.into_iter().cloned().collect());
    let (client, _task) = dht::start(key.clone(), config, Store::in_memory(1000), transports)
        .await
        .unwrap();
    let addr = client
        .status()
        .await
        .unwrap()
        .listen_addrs
        .first()
        .map(|a| a.parse().unwrap())
        .unwrap_or_else(Multiaddr::empty);
    // Every node echoes what a stream of ECHO sends it, 16 bytes at a time.
    let mut incoming = client.streams().accept(ECHO).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                while stream.read_exact(&mut buf).await.is_ok() {
                    if stream.write_all(&buf).await.is_err() || stream.flush().await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Node {
        peer: key.peer_id(),
        client,
        addr,
    }
}

/// Opens an echo stream from `from` to `to` and checks one round trip.
async fn echo(from: &Client, to: PeerId, tag: u8) -> Result<(), String> {
    let mut stream = from
        .streams()
        .open_stream(to, ECHO)
        .await
        .map_err(|e| format!("open: {e}"))?;
    let sent = [tag; 16];
    stream.write_all(&sent).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut back = [0u8; 16];
    stream
        .read_exact(&mut back)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(back, sent);
    Ok(())
}

/// libp2p-stream asks its swarm for one dial at a time and drops the others; streams
/// opened at once to peers the stream swarm is not connected to must all open anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_to_many_new_peers_at_once_all_open() {
    let first = spawn("/memory/0", Transports::Memory, None).await;
    let mut others = Vec::new();
    for _ in 0..6 {
        others.push(spawn("/memory/0", Transports::Memory, Some(&first.addr)).await);
    }
    eventually("every node to join", Duration::from_secs(20), async || {
        (first.client.status().await.unwrap().peers >= others.len()).then_some(())
    })
    .await;
    let opened = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join_all(
            others
                .iter()
                .enumerate()
                .map(|(i, n)| echo(&first.client, n.peer, i as u8)),
        ),
    )
    .await
    .expect("every stream opens within 30 s");
    for (i, result) in opened.into_iter().enumerate() {
        result.unwrap_or_else(|e| panic!("stream to node {i}: {e}"));
    }
}

/// Over TCP, both swarms listen on one port: the overlay connects (the nodes see each
/// other), streams open both ways, and connections that speak neither protocol, left
/// hanging meanwhile, do no harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_swarm_shares_the_overlays_tcp_port() {
    let a = spawn("/ip4/127.0.0.1/tcp/0", Transports::Network, None).await;
    let b = spawn("/ip4/127.0.0.1/tcp/0", Transports::Network, Some(&a.addr)).await;
    eventually("b to join a", Duration::from_secs(20), async || {
        (a.client.status().await.unwrap().peers == 1).then_some(())
    })
    .await;

    // Bytes that are no multistream-select at all, and a proposal the node does not
    // speak, left hanging while streams open: the overlay's negotiation has them.
    let port = tcp_port(&a.addr);
    let mut junk_connections = Vec::new();
    for junk in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        [&[19u8][..], b"/multistream/1.0.0\n", &[5u8], b"/tls\n"].concat(),
    ] {
        use tokio::io::AsyncWriteExt as _;
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.write_all(&junk).await.unwrap();
        junk_connections.push(tcp);
    }

    // a dials b's stream swarm (b dialled a's overlay), then b reuses that connection.
    echo(&a.client, b.peer, 1).await.unwrap();
    assert_eq!(a.client.status().await.unwrap().stream_peers, 1);
    echo(&b.client, a.peer, 2).await.unwrap();
    assert_eq!(b.client.status().await.unwrap().peers, 1);
    drop(junk_connections);
}

/// One host that opens connections and sends nothing holds at most
/// [`dht::streams::MAX_SORTING_PER_SOURCE`] of them while the node waits for their first
/// bytes: the next one from that host is closed unanswered, and a dialer from another
/// address is still answered. (Without the bound, one host could take every one of the
/// node's slots for connections being sorted, and with them its inbound connections.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_silent_host_holds_a_bounded_share_of_the_connections_being_sorted() {
    use std::net::{Ipv4Addr, SocketAddr};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let a = spawn("/ip4/127.0.0.1/tcp/0", Transports::Network, None).await;
    let port = tcp_port(&a.addr);
    // Loopback answers for all of 127.0.0.0/8: each address is another source. Ports
    // allowed to be reused: what these connections leave in TIME_WAIT then does not stop
    // a later process from binding the same port on another address (see
    // `a_node_joins_when_its_listening_port_is_taken_elsewhere`).
    let connect_from = async |host: Ipv4Addr| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from((host, 0))).unwrap();
        socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .unwrap()
    };
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let mut silent = Vec::new();
    for _ in 0..dht::streams::MAX_SORTING_PER_SOURCE {
        silent.push(connect_from(flooder).await);
    }
    // multistream-select's header and a proposal of Noise: what a dialer of the overlay
    // sends first, and what the node answers with the same header.
    let header = [&[19u8][..], b"/multistream/1.0.0\n"].concat();
    let hello = [&header[..], &[7u8], b"/noise\n"].concat();

    let mut one_more = connect_from(flooder).await;
    // Written before the node closes it, or refused (a reset): either way unanswered.
    let _ = one_more.write_all(&hello).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), one_more.read_to_end(&mut answer))
        .await
        .expect("the connection over the bound is closed");
    assert!(
        answer.is_empty(),
        "a connection over the bound was answered: {answer:?} ({read:?})"
    );

    // Answered: the multistream header comes back.
    let answered = async |host: Ipv4Addr| {
        let mut tcp = connect_from(host).await;
        tcp.write_all(&hello).await.ok()?;
        let mut answer = vec![0u8; header.len()];
        tokio::time::timeout(Duration::from_secs(20), tcp.read_exact(&mut answer))
            .await
            .ok()?
            .ok()?;
        (answer == header).then_some(())
    };
    answered(Ipv4Addr::new(127, 0, 0, 3))
        .await
        .expect("another host is answered");

    // The silent ones close: their slots are given back, and the host is answered again.
    drop(silent);
    eventually(
        "the flooding host to be answered again",
        Duration::from_secs(20),
        async || answered(flooder).await,
    )
    .await;
}

/// A dial from the listening port binds the wildcard address at that port, which fails
/// ("address already in use") while any other socket holds the port on another address
/// of the machine without allowing reuse: a node listening on loopback at a port that,
/// say, another program's connection from 127.0.0.2 uses. The node still joins its
/// bootstrap peer: the dial goes out again from a port of its own. (On CI, a short-lived
/// `kv get` once failed so at every attempt of its 10 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_when_its_listening_port_is_taken_elsewhere() {
    use std::net::{Ipv4Addr, SocketAddr};

    let a = spawn("/ip4/127.0.0.1/tcp/0", Transports::Network, None).await;
    let elsewhere = tokio::net::TcpSocket::new_v4().unwrap();
    elsewhere
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0)))
        .unwrap();
    let port = elsewhere.local_addr().unwrap().port();

    let b = spawn(
        &format!("/ip4/127.0.0.1/tcp/{port}"),
        Transports::Network,
        Some(&a.addr),
    )
    .await;
    eventually("b to join a", Duration::from_secs(20), async || {
        (b.client.status().await.unwrap().peers == 1).then_some(())
    })
    .await;
    drop(elsewhere);
}

/// QUIC connections are the overlay's alone (not diverted): two nodes that only speak
/// QUIC join, and their streams ride the overlay's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_over_quic_and_open_streams() {
    let a = spawn("/ip4/127.0.0.1/udp/0/quic-v1", Transports::Network, None).await;
    let b = spawn(
        "/ip4/127.0.0.1/udp/0/quic-v1",
        Transports::Network,
        Some(&a.addr),
    )
    .await;
    eventually(
        "b to join a over QUIC",
        Duration::from_secs(20),
        async || (a.client.status().await.unwrap().peers == 1).then_some(()),
    )
    .await;
    echo(&a.client, b.peer, 3).await.unwrap();
    echo(&b.client, a.peer, 4).await.unwrap();
}

fn tcp_port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap()
}

/// A peer that announces no address (it dialled us, say from behind a NAT) cannot be
/// dialled by the stream swarm: streams to it ride the overlay's connection it opened,
/// and its own streams to us take the stream swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_be_dialled_is_reached_on_the_overlays_connection() {
    let a = spawn("/memory/0", Transports::Memory, None).await;
    let b = spawn("", Transports::Memory, Some(&a.addr)).await;
    eventually("b to join a", Duration::from_secs(20), async || {
        (a.client.status().await.unwrap().peers == 1).then_some(())
    })
    .await;
    for tag in 0..3 {
        tokio::time::timeout(Duration::from_secs(20), echo(&a.client, b.peer, tag))
            .await
            .expect("the stream opens within 20 s")
            .unwrap();
    }
    assert_eq!(a.client.status().await.unwrap().stream_peers, 0);
    echo(&b.client, a.peer, 9).await.unwrap();
    assert_eq!(b.client.status().await.unwrap().stream_peers, 1);
}
