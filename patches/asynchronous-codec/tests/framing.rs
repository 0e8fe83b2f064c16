//! The framing against readers and writers that give and take bytes in every way they
//! may: one at a time, many frames at once, with `Pending` between, misreporting.

use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::task::{Context, Poll};

use asynchronous_codec::{
    Bytes, BytesCodec, BytesMut, Decoder, Encoder, Framed, FramedRead, FramedWrite, LengthCodec,
    LinesCodec,
};
use futures::executor::block_on;
use futures::io::{AsyncRead, AsyncWrite, Cursor};
use futures::{SinkExt, StreamExt, TryStreamExt};
use proptest::prelude::*;

/// Gives its bytes in reads of the given sizes (cycled), answering `Pending` (and waking
/// at once) before every other read when `stalls` is set.
struct Chunked {
    bytes: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    reads: usize,
    stalls: bool,
    stalled: bool,
}

impl Chunked {
    fn new(bytes: Vec<u8>, sizes: Vec<usize>, stalls: bool) -> Self {
        Chunked {
            bytes,
            at: 0,
            sizes,
            reads: 0,
            stalls,
            stalled: false,
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.stalls && !self.stalled {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stalled = false;
        let size = self.sizes[self.reads % self.sizes.len()].max(1);
        self.reads += 1;
        let n = size.min(buf.len()).min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

fn length_framed(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    for frame in frames {
        LengthCodec
            .encode(Bytes::copy_from_slice(frame), &mut bytes)
            .expect("encoding into memory does not fail");
    }
    bytes.to_vec()
}

fn read_all(reader: Chunked) -> io::Result<Vec<Vec<u8>>> {
    block_on(
        FramedRead::new(reader, LengthCodec)
            .map_ok(|frame| frame.to_vec())
            .try_collect(),
    )
}

#[test]
fn frames_read_a_byte_at_a_time_come_whole() {
    let frames = vec![b"hello".to_vec(), Vec::new(), vec![7; 300]];
    let reader = Chunked::new(length_framed(&frames), vec![1], true);
    assert_eq!(read_all(reader).unwrap(), frames);
}

#[test]
fn many_frames_in_one_read_all_come() {
    let frames: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let reader = Chunked::new(length_framed(&frames), vec![1 << 20], false);
    assert_eq!(read_all(reader).unwrap(), frames);
}

#[test]
fn a_frame_larger_than_one_read_comes_whole() {
    let frames = vec![vec![3; 200_000], vec![4; 65_537]];
    let reader = Chunked::new(length_framed(&frames), vec![1 << 20], false);
    assert_eq!(read_all(reader).unwrap(), frames);
}

#[test]
fn the_end_with_bytes_that_make_no_frame_is_an_error() {
    let mut bytes = length_framed(&[b"whole".to_vec(), b"cut short".to_vec()]);
    bytes.truncate(bytes.len() - 3);
    let mut framed = FramedRead::new(Cursor::new(bytes), LengthCodec);
    block_on(async {
        assert_eq!(framed.next().await.unwrap().unwrap(), &b"whole"[..]);
        let error = framed.next().await.unwrap().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::UnexpectedEof);
        assert_eq!(framed.read_buffer().len(), 8 + 6);
    });
}

#[test]
fn a_clean_end_ends_the_stream() {
    let mut framed = FramedRead::new(Cursor::new(Vec::new()), LengthCodec);
    assert!(block_on(framed.next()).is_none());
}

/// Frames only what is left at the end.
struct AtTheEnd;

impl Decoder for AtTheEnd {
    type Item = Vec<u8>;
    type Error = io::Error;

    fn decode(&mut self, _: &mut BytesMut) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Vec<u8>>> {
        Ok(Some(src.split().to_vec()))
    }
}

#[test]
fn what_is_left_at_the_end_goes_to_decode_eof() {
    let reader = Chunked::new(b"all of it".to_vec(), vec![2], true);
    let frames: Vec<Vec<u8>> = block_on(FramedRead::new(reader, AtTheEnd).try_collect()).unwrap();
    assert_eq!(frames, vec![b"all of it".to_vec()]);
}

/// A reader that reads its bytes through a `FramedRead` of its own, on the same thread:
/// both reads need a buffer at once.
struct Nested(FramedRead<Chunked, BytesCodec>);

impl AsyncRead for Nested {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                // BytesCodec frames no more than one read gave, and reads ask for no
                // more than the outer buffer holds.
                assert!(bytes.len() <= buf.len());
                buf[..bytes.len()].copy_from_slice(&bytes);
                Poll::Ready(Ok(bytes.len()))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(None) => Poll::Ready(Ok(0)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[test]
fn a_reader_that_reads_through_framing_itself_gets_every_byte() {
    let frames = vec![vec![1; 70_000], b"short".to_vec(), vec![2; 10]];
    let inner = Chunked::new(length_framed(&frames), vec![3, 5000, 1 << 17], true);
    let outer = FramedRead::new(Nested(FramedRead::new(inner, BytesCodec)), LengthCodec);
    let got: Vec<Vec<u8>> = block_on(outer.map_ok(|f| f.to_vec()).try_collect()).unwrap();
    assert_eq!(got, frames);
}

/// Claims to have read more than it was given.
struct Boastful;

impl AsyncRead for Boastful {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len() + 1))
    }
}

#[test]
fn a_reader_that_reports_too_many_bytes_is_an_error() {
    let error = block_on(FramedRead::new(Boastful, LengthCodec).next())
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);
}

/// Records what it is given, taking at most `take` bytes per write (or claiming one
/// more than it was given, when `boasts`), and whether it was flushed and closed.
#[derive(Default)]
struct Recorder {
    written: Vec<u8>,
    writes: usize,
    take: usize,
    boasts: bool,
    flushed: bool,
    closed: bool,
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes += 1;
        if self.boasts {
            return Poll::Ready(Ok(buf.len() + 1));
        }
        let n = buf.len().min(self.take);
        self.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flushed = true;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

fn recorder(take: usize) -> Recorder {
    Recorder {
        take,
        ..Recorder::default()
    }
}

#[test]
fn items_wait_below_the_high_water_mark_and_a_flush_writes_them_all() {
    let mut framed = FramedWrite::new(recorder(7), LinesCodec);
    framed.set_send_high_water_mark(64);
    block_on(async {
        for _ in 0..7 {
            framed.feed("ten bytes\n".to_owned()).await.unwrap();
        }
        assert_eq!(framed.writes, 0, "nothing written while below the mark");
        // 70 bytes buffered: the next item's poll_ready writes (7 bytes a write) until
        // less than 64 are.
        framed.feed("ten bytes\n".to_owned()).await.unwrap();
        assert_eq!(framed.written.len(), 7);
        assert!(!framed.flushed);
        framed.flush().await.unwrap();
        assert_eq!(framed.written, "ten bytes\n".repeat(8).as_bytes());
        assert!(framed.flushed && !framed.closed);
        framed.close().await.unwrap();
        assert!(framed.closed);
    });
}

#[test]
fn a_writer_that_takes_nothing_or_too_much_is_an_error() {
    let mut framed = FramedWrite::new(recorder(0), BytesCodec);
    let error = block_on(framed.send(Bytes::from_static(b"x"))).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::WriteZero);

    let boastful = Recorder {
        boasts: true,
        ..recorder(1)
    };
    let mut framed = FramedWrite::new(boastful, BytesCodec);
    let error = block_on(framed.send(Bytes::from_static(b"x"))).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);
}

/// A byte stream that reads from one buffer and writes to another.
struct Duplex {
    read: Chunked,
    write: Recorder,
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_close(cx)
    }
}

/// Lines one way, then (after a "handshake") length-framed frames both ways.
struct Handshake;

impl Encoder for Handshake {
    type Item<'a> = &'a str;
    type Error = io::Error;

    fn encode(&mut self, item: &str, dst: &mut BytesMut) -> io::Result<()> {
        LinesCodec.encode(item.to_owned(), dst)
    }
}

impl Decoder for Handshake {
    type Item = String;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<String>> {
        LinesCodec.decode(src)
    }
}

#[test]
fn taking_a_framed_apart_for_another_codec_keeps_the_bytes_it_buffered() {
    // The peer's line and its first frame arrive in one read, as after a handshake.
    let mut bytes = b"hello\n".to_vec();
    bytes.extend(length_framed(&[b"first".to_vec(), b"second".to_vec()]));
    let io = Duplex {
        read: Chunked::new(bytes, vec![1 << 16], false),
        write: recorder(usize::MAX),
    };
    let mut framed = Framed::new(io, Handshake);
    block_on(async {
        assert_eq!(framed.next().await.unwrap().unwrap(), "hello\n");
        framed.feed("hi\n").await.unwrap();
        let parts = framed.into_parts().map_codec(|_| LengthCodec);
        assert_eq!(parts.write_buffer, &b"hi\n"[..], "unwritten bytes kept");
        let mut framed = Framed::from_parts(parts);
        assert_eq!(framed.next().await.unwrap().unwrap(), &b"first"[..]);
        assert_eq!(framed.next().await.unwrap().unwrap(), &b"second"[..]);
        framed.send(Bytes::from_static(b"reply")).await.unwrap();
        let mut expected = b"hi\n".to_vec();
        expected.extend(length_framed(&[b"reply".to_vec()]));
        assert_eq!(framed.write.written, expected);
    });
}

#[test]
fn the_codecs_read_back_what_they_wrote() {
    let mut buffer = BytesMut::new();
    LinesCodec
        .encode("one\ntwo\n".to_owned(), &mut buffer)
        .unwrap();
    assert_eq!(LinesCodec.decode(&mut buffer).unwrap().unwrap(), "one\n");
    assert_eq!(LinesCodec.decode(&mut buffer).unwrap().unwrap(), "two\n");
    assert_eq!(LinesCodec.decode(&mut buffer).unwrap(), None);

    buffer.extend_from_slice(b"\xff\n");
    let error = LinesCodec.decode(&mut buffer).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidData);

    BytesCodec
        .encode(Bytes::from_static(b"as is"), &mut buffer)
        .unwrap();
    assert_eq!(
        BytesCodec.decode(&mut buffer).unwrap().unwrap(),
        &b"as is"[..]
    );
    assert_eq!(BytesCodec.decode(&mut buffer).unwrap(), None);

    // A length past what is buffered (or past the address space) is no frame yet.
    buffer.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(LengthCodec.decode(&mut buffer).unwrap(), None);
    assert_eq!(buffer.len(), 8);
}

proptest! {
    /// Frames written through a `FramedWrite` come back the same through a
    /// `FramedRead`, whatever sizes the reads come in.
    #[test]
    fn frames_come_back_whatever_the_reads(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..40),
        sizes in prop::collection::vec(1usize..100_000, 1..8),
        stalls in any::<bool>(),
        take in 1usize..5000,
        hwm in 0usize..20_000,
    ) {
        let mut writer = FramedWrite::new(recorder(take), LengthCodec);
        writer.set_send_high_water_mark(hwm);
        block_on(async {
            for frame in &frames {
                writer.feed(Bytes::copy_from_slice(frame)).await.unwrap();
            }
            writer.flush().await.unwrap();
        });
        let written = writer.into_inner().written;
        prop_assert_eq!(&written, &length_framed(&frames));
        let read = read_all(Chunked::new(written, sizes, stalls)).unwrap();
        prop_assert_eq!(read, frames);
    }
}

/// Records the buffer each read is offered and what it held, and writes `bytes` (or
/// claims `claims` bytes without writing any, when set).
#[derive(Default)]
struct Watcher {
    offered: Vec<(usize, usize)>,
    held_only_zeros: Vec<bool>,
    bytes: Vec<u8>,
    claims: Option<usize>,
}

impl AsyncRead for Watcher {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.offered.push((buf.as_ptr() as usize, buf.len()));
        self.held_only_zeros.push(buf.iter().all(|&b| b == 0));
        if let Some(n) = self.claims {
            return Poll::Ready(Ok(n));
        }
        let n = self.bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes.drain(..n);
        Poll::Ready(Ok(n))
    }
}

#[test]
fn reads_reuse_one_buffer_and_hand_on_no_bytes_of_another_reader() {
    let secret = Watcher {
        bytes: b"the other connection's secret".to_vec(),
        ..Watcher::default()
    };
    let mut first = FramedRead::new(secret, BytesCodec);
    let got = block_on(first.next()).unwrap().unwrap();
    assert_eq!(got, &b"the other connection's secret"[..]);
    // Were the buffer freed after the read, this would likely take its memory, and the
    // next read would be handed another.
    let between = vec![1u8; 64 * 1024];
    // A reader that claims bytes it never wrote gets zeros, not the first one's.
    let liar = Watcher {
        claims: Some(40),
        ..Watcher::default()
    };
    let mut second = FramedRead::new(liar, BytesCodec);
    let got = block_on(second.next()).unwrap().unwrap();
    assert_eq!(got, &[0u8; 40][..]);
    assert!(first.held_only_zeros.iter().all(|&z| z));
    assert!(second.held_only_zeros.iter().all(|&z| z));
    // One buffer, kept on the thread, served both.
    assert_eq!(first.offered[0].0, second.offered[0].0);
    assert_ne!(between.as_ptr() as usize, first.offered[0].0);
}

/// Waits for a frame of `len` bytes, reserving room for it (as Noise's decoder does).
struct Reserving(usize);

impl Decoder for Reserving {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        if src.len() >= self.0 {
            return Ok(Some(src.split_to(self.0)));
        }
        src.reserve(self.0 - src.len());
        Ok(None)
    }
}

#[test]
fn a_read_asks_for_the_room_the_frame_buffer_has_within_bounds() {
    let small = Watcher {
        bytes: vec![1; 10],
        ..Watcher::default()
    };
    let mut framed = FramedRead::new(small, Reserving(10));
    block_on(framed.next()).unwrap().unwrap();
    assert_eq!(
        framed.offered[0].1,
        8 * 1024,
        "an idle buffer's reads stay at 8 KiB"
    );

    let large = Watcher {
        bytes: vec![2; 200_000],
        ..Watcher::default()
    };
    let mut framed = FramedRead::new(large, Reserving(200_000));
    let frame = block_on(framed.next()).unwrap().unwrap();
    assert_eq!(frame.len(), 200_000);
    assert!(framed.offered.iter().all(|&(_, len)| len <= 64 * 1024));
    assert_eq!(
        framed.offered[0].1,
        64 * 1024,
        "room reserved for a large frame"
    );
    assert_eq!(framed.offered.len(), 4, "200 000 bytes in reads of 64 KiB");
}

/// Panics when read: what is buffered must be decoded without reading.
struct Untouchable;

impl AsyncRead for Untouchable {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        panic!("read although whole frames were buffered");
    }
}

impl AsyncWrite for Untouchable {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        panic!("written below the high water mark");
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn frames_buffered_in_parts_are_decoded_without_reading() {
    let bytes = length_framed(&[b"one".to_vec(), b"two".to_vec()]);
    let mut reader = FramedRead::new(Cursor::new(bytes), LengthCodec);
    // Reads both frames' bytes, decodes one.
    assert_eq!(block_on(reader.next()).unwrap().unwrap(), &b"one"[..]);
    let parts = reader.into_parts();
    assert!(!parts.buffer.is_empty());
    let parts = asynchronous_codec::FramedReadParts::map_decoder(parts, |codec| codec);
    let buffer = parts.buffer;
    let framed = Framed::from_parts({
        let mut parts = Framed::new(Untouchable, LengthCodec).into_parts();
        parts.read_buffer = buffer;
        parts
    });
    let mut framed = framed;
    assert_eq!(block_on(framed.next()).unwrap().unwrap(), &b"two"[..]);
    // Below the mark nothing is written until a flush.
    framed.set_send_high_water_mark(1 << 20);
    block_on(framed.feed(Bytes::from_static(b"kept"))).unwrap();
    assert_eq!(framed.into_parts().write_buffer.len(), 8 + 4);
}

/// Gives half a frame, then fails once, then gives the rest.
struct Interrupted {
    bytes: Vec<u8>,
    reads: usize,
}

impl AsyncRead for Interrupted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.reads += 1;
        if self.reads == 2 {
            return Poll::Ready(Err(io::Error::other("a passing fault")));
        }
        let n = if self.reads == 1 { 6 } else { self.bytes.len() }.min(buf.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes.drain(..n);
        Poll::Ready(Ok(n))
    }
}

#[test]
fn a_read_error_keeps_what_was_buffered() {
    let bytes = length_framed(&[b"whole after all".to_vec()]);
    let mut framed = FramedRead::new(Interrupted { bytes, reads: 0 }, LengthCodec);
    block_on(async {
        let error = framed.next().await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "a passing fault");
        assert_eq!(framed.read_buffer().len(), 6);
        assert_eq!(
            framed.next().await.unwrap().unwrap(),
            &b"whole after all"[..]
        );
        // At the end, and polled again after it: still the end.
        assert!(framed.next().await.is_none());
        assert!(framed.next().await.is_none());
    });
}

#[test]
fn a_framed_write_taken_apart_keeps_what_it_had_not_written() {
    let mut framed = FramedWrite::new(recorder(usize::MAX), LengthCodec);
    framed.set_send_high_water_mark(1 << 20);
    block_on(framed.feed(Bytes::from_static(b"pending"))).unwrap();
    assert_eq!(framed.writes, 0);
    let parts = framed.into_parts().map_encoder(|codec| codec);
    let mut framed = FramedWrite::from_parts(parts);
    block_on(framed.flush()).unwrap();
    assert_eq!(framed.written, length_framed(&[b"pending".to_vec()]));
}

/// The framing types are `Unpin` whenever the byte stream is, whatever the codec, and
/// `Send` when both are (as the crates.io crate's are).
#[test]
fn framing_is_unpin_with_any_codec_and_send() {
    struct Pinned(std::marker::PhantomPinned);
    fn unpin<T: Unpin>() {}
    fn send<T: Send>() {}
    unpin::<Framed<Cursor<Vec<u8>>, Pinned>>();
    unpin::<FramedRead<Cursor<Vec<u8>>, Pinned>>();
    unpin::<FramedWrite<Cursor<Vec<u8>>, Pinned>>();
    send::<Framed<Cursor<Vec<u8>>, LengthCodec>>();
}
