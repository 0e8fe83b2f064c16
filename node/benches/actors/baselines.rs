//! The baselines our actor messaging is compared against.
//!
//! Every baseline runs two endpoints in this one process over TCP loopback
//! (`127.0.0.1`) and makes a fresh connection per call, so calls are independent:
//!
//! - raw tokio TCP, frames of a 4-byte big-endian length and the payload;
//! - one long-lived [`libp2p_stream`] stream over TCP + Noise + Yamux, same framing;
//! - stock `libp2p::request_response` with its CBOR codec over TCP + Noise + Yamux.
//!
//! Each has a throughput function (messages per second) and a round-trip function
//! (one message out, the same message back, one at a time). Round-trip functions first
//! run `rounds / 10` unrecorded warm-up rounds on the same connection.

use std::{
    io,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, noise,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Capacity of the buffered readers and writers on both ends of a streaming baseline.
const BUFFER: usize = 64 * 1024;

/// Frames longer than this are rejected, as a real decoder would.
const MAX_FRAME: usize = 1024 * 1024;

/// Requests kept in flight by [`request_response_throughput`]. Below the behaviour's
/// default `max_concurrent_streams` (100), so none wait for a stream slot.
pub(crate) const REQUEST_WINDOW: u64 = 64;

/// Long enough that no connection is closed as idle during a run.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub(crate) const STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/blocktree/bench-stream/1");
const REQUEST_PROTOCOL: StreamProtocol = StreamProtocol::new("/blocktree/bench-request/1");

/// The sample at percentile `p` (0–100, nearest rank) of `samples`, which it sorts;
/// zero for no samples.
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = (p / 100.0 * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn warmup_rounds(rounds: usize) -> usize {
    rounds / 10
}

/// Aborts the task when dropped, so a failed baseline leaves nothing running.
#[derive(Debug)]
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn invalid_frame() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "frame longer than MAX_FRAME")
}

fn frame_header(payload: usize) -> anyhow::Result<[u8; 4]> {
    Ok(u32::try_from(payload)
        .context("payload longer than u32::MAX")?
        .to_be_bytes())
}

/// One whole frame, header and payload, for writers that send it with one write.
fn whole_frame(payload: usize) -> anyhow::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(4 + payload);
    frame.extend_from_slice(&frame_header(payload)?);
    frame.resize(4 + payload, 0xAB);
    Ok(frame)
}

/// Framing over tokio's I/O traits.
mod tokio_frames {
    use std::io;

    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

    /// Reads one frame into `body`; `false` at a clean end of stream before a frame.
    pub(super) async fn read<R: AsyncRead + Unpin>(
        reader: &mut R,
        body: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let mut header = [0; 4];
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > super::MAX_FRAME {
            return Err(super::invalid_frame());
        }
        body.resize(len, 0);
        reader.read_exact(body).await?;
        Ok(true)
    }

    pub(super) async fn write<W: AsyncWrite + Unpin>(
        writer: &mut W,
        header: [u8; 4],
        body: &[u8],
    ) -> io::Result<()> {
        writer.write_all(&header).await?;
        writer.write_all(body).await
    }
}

/// The same framing over the `futures` I/O traits, which libp2p streams implement.
mod futures_frames {
    use std::io;

    use futures::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

    /// Reads one frame into `body`; `false` at a clean end of stream before a frame.
    pub(super) async fn read<R: AsyncRead + Unpin>(
        reader: &mut R,
        body: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let mut header = [0; 4];
        match reader.read_exact(&mut header).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > super::MAX_FRAME {
            return Err(super::invalid_frame());
        }
        body.resize(len, 0);
        reader.read_exact(body).await?;
        Ok(true)
    }

    pub(super) async fn write<W: AsyncWrite + Unpin>(
        writer: &mut W,
        header: [u8; 4],
        body: &[u8],
    ) -> io::Result<()> {
        writer.write_all(&header).await?;
        writer.write_all(body).await
    }
}

// ---------------------------------------------------------------------------------------
// Raw tokio TCP.

async fn tcp_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let (client, accepted) = tokio::join!(
        TcpStream::connect(listener.local_addr()?),
        listener.accept()
    );
    let (client, (server, _)) = (client?, accepted?);
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

/// Messages per second of `messages` frames of `payload` bytes written through a
/// buffered writer and parsed one by one on the other end, from the first write to the
/// last frame parsed.
pub(crate) async fn raw_tcp_throughput(messages: u64, payload: usize) -> anyhow::Result<f64> {
    let (client, server) = tcp_pair().await?;
    let mut receiver = AbortOnDrop(tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::with_capacity(BUFFER, server);
        let mut body = Vec::new();
        for _ in 0..messages {
            if !tokio_frames::read(&mut reader, &mut body).await? {
                bail!("stream ended early");
            }
        }
        anyhow::Ok(Instant::now())
    }));

    let header = frame_header(payload)?;
    let body = vec![0xAB; payload];
    let mut writer = tokio::io::BufWriter::with_capacity(BUFFER, client);
    let start = Instant::now();
    for _ in 0..messages {
        tokio_frames::write(&mut writer, header, &body).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut writer).await?;
    let end = (&mut receiver.0).await??;
    Ok(messages as f64 / (end - start).as_secs_f64())
}

/// Round trips of one `payload`-byte frame echoed back, `rounds` times in sequence.
pub(crate) async fn raw_tcp_round_trips(
    rounds: usize,
    payload: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (client, server) = tcp_pair().await?;
    let _echo = AbortOnDrop(tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::with_capacity(BUFFER, server);
        let mut body = Vec::new();
        let mut out = Vec::new();
        while tokio_frames::read(&mut reader, &mut body).await? {
            out.clear();
            out.extend_from_slice(&frame_header(body.len())?);
            out.extend_from_slice(&body);
            tokio::io::AsyncWriteExt::write_all(reader.get_mut(), &out).await?;
        }
        anyhow::Ok(())
    }));

    let frame = whole_frame(payload)?;
    let mut reader = tokio::io::BufReader::with_capacity(BUFFER, client);
    let mut body = Vec::new();
    let warmup = warmup_rounds(rounds);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..warmup + rounds {
        let start = Instant::now();
        tokio::io::AsyncWriteExt::write_all(reader.get_mut(), &frame).await?;
        if !tokio_frames::read(&mut reader, &mut body).await? {
            bail!("echo ended early");
        }
        let elapsed = start.elapsed();
        if body.len() != payload {
            bail!("echo of {} bytes, sent {payload}", body.len());
        }
        if round >= warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------
// libp2p: swarms over TCP + Noise + Yamux.

fn new_swarm<B: NetworkBehaviour>(behaviour: B) -> anyhow::Result<Swarm<B>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|config| config.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build())
}

/// Has `listener` listen on loopback and `dialer` dial it; returns once both ends have
/// the connection.
async fn connect<A: NetworkBehaviour, B: NetworkBehaviour>(
    listener: &mut Swarm<A>,
    dialer: &mut Swarm<B>,
) -> anyhow::Result<()> {
    listener.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let address: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
            break address;
        }
    };
    dialer.dial(address.with(libp2p::multiaddr::Protocol::P2p(*listener.local_peer_id())))?;
    let (mut listener_up, mut dialer_up) = (false, false);
    while !(listener_up && dialer_up) {
        tokio::select! {
            event = listener.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { .. } => listener_up = true,
                SwarmEvent::IncomingConnectionError { error, .. } => {
                    bail!("incoming connection failed: {error}")
                }
                _ => {}
            },
            event = dialer.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { .. } => dialer_up = true,
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    bail!("dial failed: {error}")
                }
                _ => {}
            },
        }
    }
    Ok(())
}

/// Drives `swarm` in its own task until the returned guard is dropped.
fn drive<B>(mut swarm: Swarm<B>) -> AbortOnDrop<()>
where
    B: NetworkBehaviour + Send + 'static,
    Swarm<B>: Send,
{
    AbortOnDrop(tokio::spawn(async move {
        while swarm.next().await.is_some() {}
    }))
}

// ---------------------------------------------------------------------------------------
// One bare libp2p-stream stream.

/// Both ends of one negotiated stream; the swarms run as long as `_swarms` lives.
#[derive(Debug)]
pub(crate) struct StreamPair<G> {
    pub(crate) client: libp2p::swarm::Stream,
    pub(crate) server: libp2p::swarm::Stream,
    pub(crate) _swarms: G,
}

async fn stream_pair() -> anyhow::Result<StreamPair<[AbortOnDrop<()>; 2]>> {
    let mut server = new_swarm(libp2p_stream::Behaviour::new())?;
    let mut incoming = server.behaviour().new_control().accept(STREAM_PROTOCOL)?;
    let mut client = new_swarm(libp2p_stream::Behaviour::new())?;
    let mut control = client.behaviour().new_control();
    connect(&mut server, &mut client).await?;
    let server_peer = *server.local_peer_id();
    let swarms = [drive(server), drive(client)];

    let client = control.open_stream(server_peer, STREAM_PROTOCOL).await?;
    let (_, server) = incoming
        .next()
        .await
        .context("server stopped accepting streams")?;
    Ok(StreamPair {
        client,
        server,
        _swarms: swarms,
    })
}

/// As [`raw_tcp_throughput`], over one libp2p-stream stream opened beforehand.
pub(crate) async fn libp2p_stream_throughput(messages: u64, payload: usize) -> anyhow::Result<f64> {
    stream_throughput(stream_pair().await?, messages, payload).await
}

/// As [`raw_tcp_throughput`], over `pair`.
pub(crate) async fn stream_throughput<G>(
    pair: StreamPair<G>,
    messages: u64,
    payload: usize,
) -> anyhow::Result<f64> {
    let StreamPair {
        client,
        server,
        _swarms,
    } = pair;
    let mut receiver = AbortOnDrop(tokio::spawn(async move {
        let mut reader = futures::io::BufReader::with_capacity(BUFFER, server);
        let mut body = Vec::new();
        for _ in 0..messages {
            if !futures_frames::read(&mut reader, &mut body).await? {
                bail!("stream ended early");
            }
        }
        anyhow::Ok(Instant::now())
    }));

    let header = frame_header(payload)?;
    let body = vec![0xAB; payload];
    let mut writer = futures::io::BufWriter::with_capacity(BUFFER, client);
    let start = Instant::now();
    for _ in 0..messages {
        futures_frames::write(&mut writer, header, &body).await?;
    }
    futures::AsyncWriteExt::flush(&mut writer).await?;
    let end = (&mut receiver.0).await??;
    Ok(messages as f64 / (end - start).as_secs_f64())
}

/// As [`raw_tcp_round_trips`], over one libp2p-stream stream opened beforehand.
pub(crate) async fn libp2p_stream_round_trips(
    rounds: usize,
    payload: usize,
) -> anyhow::Result<Vec<Duration>> {
    stream_round_trips(stream_pair().await?, rounds, payload).await
}

/// As [`raw_tcp_round_trips`], over `pair`.
pub(crate) async fn stream_round_trips<G>(
    pair: StreamPair<G>,
    rounds: usize,
    payload: usize,
) -> anyhow::Result<Vec<Duration>> {
    let StreamPair {
        client,
        server,
        _swarms,
    } = pair;
    let _echo = AbortOnDrop(tokio::spawn(async move {
        let mut reader = futures::io::BufReader::with_capacity(BUFFER, server);
        let mut body = Vec::new();
        let mut out = Vec::new();
        while futures_frames::read(&mut reader, &mut body).await? {
            out.clear();
            out.extend_from_slice(&frame_header(body.len())?);
            out.extend_from_slice(&body);
            futures::AsyncWriteExt::write_all(reader.get_mut(), &out).await?;
            futures::AsyncWriteExt::flush(reader.get_mut()).await?;
        }
        anyhow::Ok(())
    }));

    let frame = whole_frame(payload)?;
    let mut reader = futures::io::BufReader::with_capacity(BUFFER, client);
    let mut body = Vec::new();
    let warmup = warmup_rounds(rounds);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..warmup + rounds {
        let start = Instant::now();
        futures::AsyncWriteExt::write_all(reader.get_mut(), &frame).await?;
        futures::AsyncWriteExt::flush(reader.get_mut()).await?;
        if !futures_frames::read(&mut reader, &mut body).await? {
            bail!("echo ended early");
        }
        let elapsed = start.elapsed();
        if body.len() != payload {
            bail!("echo of {} bytes, sent {payload}", body.len());
        }
        if round >= warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------------------
// Stock request-response with the CBOR codec.

/// Request and response body: the payload as one CBOR byte string, as `serde_bytes`
/// would encode it (a plain `Vec<u8>` would become an array of integers).
#[derive(Debug, Clone)]
pub(crate) struct Payload(Vec<u8>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(PayloadVisitor)
    }
}

#[derive(Debug)]
struct PayloadVisitor;

impl serde::de::Visitor<'_> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
        Ok(Payload(v))
    }
}

type RequestResponse = request_response::cbor::Behaviour<Payload, Payload>;
type RequestResponseEvent = SwarmEvent<request_response::Event<Payload, Payload>>;

fn request_response_behaviour() -> RequestResponse {
    request_response::cbor::Behaviour::new(
        [(REQUEST_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
    )
}

/// A connected client swarm, and the server swarm answering every request with its
/// own body in a task of its own.
async fn request_response_pair() -> anyhow::Result<(Swarm<RequestResponse>, PeerId, AbortOnDrop<()>)>
{
    let mut server = new_swarm(request_response_behaviour())?;
    let mut client = new_swarm(request_response_behaviour())?;
    connect(&mut server, &mut client).await?;
    let server_peer = *server.local_peer_id();
    let echo = AbortOnDrop(tokio::spawn(async move {
        while let Some(event) = server.next().await {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) = event
            {
                // Err only if the client is gone, which ends the run anyway.
                let _ = server.behaviour_mut().send_response(channel, request);
            }
        }
    }));
    Ok((client, server_peer, echo))
}

/// The response body of `event` if it is a response; an error if it is a failure.
fn response(event: RequestResponseEvent) -> anyhow::Result<Option<Payload>> {
    use request_response::{Event, Message};
    match event {
        SwarmEvent::Behaviour(Event::Message {
            message: Message::Response { response, .. },
            ..
        }) => Ok(Some(response)),
        SwarmEvent::Behaviour(Event::OutboundFailure { error, .. }) => {
            bail!("request failed: {error}")
        }
        SwarmEvent::ConnectionClosed { cause, .. } => bail!("connection closed: {cause:?}"),
        _ => Ok(None),
    }
}

/// Completed request/response pairs per second, with [`REQUEST_WINDOW`] requests of
/// `payload` bytes in flight, the client's swarm driven by the measuring task itself.
pub(crate) async fn request_response_throughput(
    requests: u64,
    payload: usize,
) -> anyhow::Result<f64> {
    let (mut client, server, _echo) = request_response_pair().await?;
    let request = Payload(vec![0xAB; payload]);
    let start = Instant::now();
    let mut sent = 0;
    while sent < requests.min(REQUEST_WINDOW) {
        client
            .behaviour_mut()
            .send_request(&server, request.clone());
        sent += 1;
    }
    let mut done = 0;
    while done < requests {
        let Some(response) = response(client.select_next_some().await)? else {
            continue;
        };
        if response.0.len() != payload {
            bail!("response of {} bytes, sent {payload}", response.0.len());
        }
        done += 1;
        if sent < requests {
            client
                .behaviour_mut()
                .send_request(&server, request.clone());
            sent += 1;
        }
    }
    Ok(requests as f64 / start.elapsed().as_secs_f64())
}

/// Round trips of one request of `payload` bytes at a time, `rounds` times.
pub(crate) async fn request_response_round_trips(
    rounds: usize,
    payload: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (mut client, server, _echo) = request_response_pair().await?;
    let request = Payload(vec![0xAB; payload]);
    let warmup = warmup_rounds(rounds);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..warmup + rounds {
        let start = Instant::now();
        client
            .behaviour_mut()
            .send_request(&server, request.clone());
        let response = loop {
            if let Some(response) = response(client.select_next_some().await)? {
                break response;
            }
        };
        let elapsed = start.elapsed();
        if response.0.len() != payload {
            bail!("response of {} bytes, sent {payload}", response.0.len());
        }
        if round >= warmup {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}
