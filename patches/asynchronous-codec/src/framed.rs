//! `Framed` (both ways), `FramedRead` and `FramedWrite`, and the parts they are made of.

use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_sink::Sink;
use futures_util::io::{AsyncRead, AsyncWrite};
use futures_util::stream::Stream;

use crate::io::{poll_close, poll_flush, poll_frame, poll_ready};
use crate::{Decoder, Encoder};

/// Room a frame buffer starts with.
const INITIAL_CAPACITY: usize = 8 * 1024;
/// Bytes a sink buffers before `poll_ready` writes them out (as the crates.io crate).
const DEFAULT_SEND_HIGH_WATER_MARK: usize = 128 * 1024;

/// A byte stream as a [`Stream`] of decoded frames and a [`Sink`] of items to encode.
/// Derefs to the byte stream.
#[derive(Debug)]
pub struct Framed<T, U> {
    io: T,
    codec: U,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
    high_water_mark: usize,
}

// Only `io` is ever polled; the codec and buffers are plain data.
impl<T: Unpin, U> Unpin for Framed<T, U> {}

/// What a [`Framed`] is made of, to take apart and put together again (after a
/// handshake, with another codec) without losing buffered bytes.
#[derive(Debug)]
#[non_exhaustive]
pub struct FramedParts<T, U> {
    /// The byte stream.
    pub io: T,
    /// The codec.
    pub codec: U,
    /// Bytes read and not yet decoded.
    pub read_buffer: BytesMut,
    /// Bytes encoded and not yet written.
    pub write_buffer: BytesMut,
}

impl<T, U> FramedParts<T, U> {
    /// The same parts with the codec `f` makes of this one.
    pub fn map_codec<V, F>(self, f: F) -> FramedParts<T, V>
    where
        F: FnOnce(U) -> V,
    {
        FramedParts {
            io: self.io,
            codec: f(self.codec),
            read_buffer: self.read_buffer,
            write_buffer: self.write_buffer,
        }
    }
}

impl<T, U> Framed<T, U>
where
    T: AsyncRead + AsyncWrite,
    U: Decoder + Encoder,
{
    /// Frames `io` with `codec`.
    pub fn new(io: T, codec: U) -> Self {
        Self {
            io,
            codec,
            read_buffer: BytesMut::with_capacity(INITIAL_CAPACITY),
            write_buffer: BytesMut::with_capacity(INITIAL_CAPACITY),
            high_water_mark: DEFAULT_SEND_HIGH_WATER_MARK,
        }
    }

    /// Puts parts back together, buffered bytes included.
    pub fn from_parts(parts: FramedParts<T, U>) -> Self {
        Self {
            io: parts.io,
            codec: parts.codec,
            read_buffer: parts.read_buffer,
            write_buffer: parts.write_buffer,
            high_water_mark: DEFAULT_SEND_HIGH_WATER_MARK,
        }
    }

    /// Takes this apart, buffered bytes included.
    pub fn into_parts(self) -> FramedParts<T, U> {
        FramedParts {
            io: self.io,
            codec: self.codec,
            read_buffer: self.read_buffer,
            write_buffer: self.write_buffer,
        }
    }

    /// The byte stream; buffered bytes are dropped.
    pub fn into_inner(self) -> T {
        self.io
    }

    /// The codec.
    pub fn codec(&self) -> &U {
        &self.codec
    }

    /// The codec, to change.
    pub fn codec_mut(&mut self) -> &mut U {
        &mut self.codec
    }

    /// Bytes read and not yet decoded.
    pub fn read_buffer(&self) -> &BytesMut {
        &self.read_buffer
    }

    /// Bytes buffered before `poll_ready` writes them out.
    pub fn send_high_water_mark(&self) -> usize {
        self.high_water_mark
    }

    /// Sets [`Framed::send_high_water_mark`].
    pub fn set_send_high_water_mark(&mut self, hwm: usize) {
        self.high_water_mark = hwm;
    }
}

impl<T, U> Deref for Framed<T, U> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.io
    }
}

impl<T, U> DerefMut for Framed<T, U> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T, U> Stream for Framed<T, U>
where
    T: AsyncRead + Unpin,
    U: Decoder,
{
    type Item = Result<U::Item, U::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_frame(&mut this.io, &mut this.codec, &mut this.read_buffer, cx)
    }
}

impl<T, U> Sink<U::Item<'_>> for Framed<T, U>
where
    T: AsyncWrite + Unpin,
    U: Encoder,
{
    type Error = U::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), U::Error>> {
        let this = self.get_mut();
        poll_ready(
            &mut this.io,
            cx,
            &mut this.write_buffer,
            this.high_water_mark,
        )
        .map_err(Into::into)
    }

    fn start_send(self: Pin<&mut Self>, item: U::Item<'_>) -> Result<(), U::Error> {
        let this = self.get_mut();
        this.codec.encode(item, &mut this.write_buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), U::Error>> {
        let this = self.get_mut();
        poll_flush(&mut this.io, cx, &mut this.write_buffer).map_err(Into::into)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), U::Error>> {
        let this = self.get_mut();
        poll_close(&mut this.io, cx, &mut this.write_buffer).map_err(Into::into)
    }
}

/// A byte stream as a [`Stream`] of decoded frames. Derefs to the byte stream.
#[derive(Debug)]
pub struct FramedRead<T, D> {
    io: T,
    decoder: D,
    buffer: BytesMut,
}

impl<T: Unpin, D> Unpin for FramedRead<T, D> {}

/// What a [`FramedRead`] is made of.
#[derive(Debug)]
#[non_exhaustive]
pub struct FramedReadParts<T, D> {
    /// The byte stream.
    pub io: T,
    /// The decoder.
    pub decoder: D,
    /// Bytes read and not yet decoded.
    pub buffer: BytesMut,
}

impl<T, D> FramedReadParts<T, D> {
    /// The same parts with the decoder `f` makes of this one.
    pub fn map_decoder<E, F>(self, f: F) -> FramedReadParts<T, E>
    where
        E: Decoder,
        F: FnOnce(D) -> E,
    {
        FramedReadParts {
            io: self.io,
            decoder: f(self.decoder),
            buffer: self.buffer,
        }
    }
}

impl<T, D> FramedRead<T, D>
where
    T: AsyncRead,
    D: Decoder,
{
    /// Frames `io` with `decoder`.
    pub fn new(io: T, decoder: D) -> Self {
        Self {
            io,
            decoder,
            buffer: BytesMut::with_capacity(INITIAL_CAPACITY),
        }
    }

    /// Puts parts back together, buffered bytes included.
    pub fn from_parts(parts: FramedReadParts<T, D>) -> Self {
        Self {
            io: parts.io,
            decoder: parts.decoder,
            buffer: parts.buffer,
        }
    }

    /// Takes this apart, buffered bytes included.
    pub fn into_parts(self) -> FramedReadParts<T, D> {
        FramedReadParts {
            io: self.io,
            decoder: self.decoder,
            buffer: self.buffer,
        }
    }

    /// The byte stream; buffered bytes are dropped.
    pub fn into_inner(self) -> T {
        self.io
    }

    /// The decoder.
    pub fn decoder(&self) -> &D {
        &self.decoder
    }

    /// The decoder, to change.
    pub fn decoder_mut(&mut self) -> &mut D {
        &mut self.decoder
    }

    /// Bytes read and not yet decoded.
    pub fn read_buffer(&self) -> &BytesMut {
        &self.buffer
    }
}

impl<T, D> Deref for FramedRead<T, D> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.io
    }
}

impl<T, D> DerefMut for FramedRead<T, D> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T, D> Stream for FramedRead<T, D>
where
    T: AsyncRead + Unpin,
    D: Decoder,
{
    type Item = Result<D::Item, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_frame(&mut this.io, &mut this.decoder, &mut this.buffer, cx)
    }
}

/// A byte stream as a [`Sink`] of items to encode. Derefs to the byte stream.
#[derive(Debug)]
pub struct FramedWrite<T, E> {
    io: T,
    encoder: E,
    buffer: BytesMut,
    high_water_mark: usize,
}

impl<T: Unpin, E> Unpin for FramedWrite<T, E> {}

/// What a [`FramedWrite`] is made of.
#[derive(Debug)]
#[non_exhaustive]
pub struct FramedWriteParts<T, E> {
    /// The byte stream.
    pub io: T,
    /// The encoder.
    pub encoder: E,
    /// Bytes encoded and not yet written.
    pub buffer: BytesMut,
}

impl<T, E> FramedWriteParts<T, E> {
    /// The same parts with the encoder `f` makes of this one.
    pub fn map_encoder<G, F>(self, f: F) -> FramedWriteParts<T, G>
    where
        G: Encoder,
        F: FnOnce(E) -> G,
    {
        FramedWriteParts {
            io: self.io,
            encoder: f(self.encoder),
            buffer: self.buffer,
        }
    }
}

impl<T, E> FramedWrite<T, E>
where
    T: AsyncWrite,
    E: Encoder,
{
    /// Frames `io` with `encoder`.
    pub fn new(io: T, encoder: E) -> Self {
        Self {
            io,
            encoder,
            buffer: BytesMut::with_capacity(INITIAL_CAPACITY),
            high_water_mark: DEFAULT_SEND_HIGH_WATER_MARK,
        }
    }

    /// Puts parts back together, buffered bytes included.
    pub fn from_parts(parts: FramedWriteParts<T, E>) -> Self {
        Self {
            io: parts.io,
            encoder: parts.encoder,
            buffer: parts.buffer,
            high_water_mark: DEFAULT_SEND_HIGH_WATER_MARK,
        }
    }

    /// Bytes buffered before `poll_ready` writes them out.
    pub fn send_high_water_mark(&self) -> usize {
        self.high_water_mark
    }

    /// Sets [`FramedWrite::send_high_water_mark`].
    pub fn set_send_high_water_mark(&mut self, hwm: usize) {
        self.high_water_mark = hwm;
    }

    /// Takes this apart, buffered bytes included.
    pub fn into_parts(self) -> FramedWriteParts<T, E> {
        FramedWriteParts {
            io: self.io,
            encoder: self.encoder,
            buffer: self.buffer,
        }
    }

    /// The byte stream; buffered bytes are dropped.
    pub fn into_inner(self) -> T {
        self.io
    }

    /// The encoder.
    pub fn encoder(&self) -> &E {
        &self.encoder
    }

    /// The encoder, to change.
    pub fn encoder_mut(&mut self) -> &mut E {
        &mut self.encoder
    }
}

impl<T, E> Deref for FramedWrite<T, E> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.io
    }
}

impl<T, E> DerefMut for FramedWrite<T, E> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T, E> Sink<E::Item<'_>> for FramedWrite<T, E>
where
    T: AsyncWrite + Unpin,
    E: Encoder,
{
    type Error = E::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E::Error>> {
        let this = self.get_mut();
        poll_ready(&mut this.io, cx, &mut this.buffer, this.high_water_mark).map_err(Into::into)
    }

    fn start_send(self: Pin<&mut Self>, item: E::Item<'_>) -> Result<(), E::Error> {
        let this = self.get_mut();
        this.encoder.encode(item, &mut this.buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E::Error>> {
        let this = self.get_mut();
        poll_flush(&mut this.io, cx, &mut this.buffer).map_err(Into::into)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E::Error>> {
        let this = self.get_mut();
        poll_close(&mut this.io, cx, &mut this.buffer).map_err(Into::into)
    }
}
