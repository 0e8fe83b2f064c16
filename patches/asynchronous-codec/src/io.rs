//! Reading into the frame buffer and writing out of it.

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures_util::io::{AsyncRead, AsyncWrite};

use crate::Decoder;

/// The least a read asks for (what the crates.io crate always asked for).
pub(crate) const MIN_READ: usize = 8 * 1024;
/// The most a read asks for: a frame buffer with this much room (a decoder reserves
/// room for a large frame it is waiting for) takes a bulk transfer in fewer reads.
pub(crate) const MAX_READ: usize = 64 * 1024;
/// Buffers kept per thread: one per read in progress (a reader that itself reads
/// through a `FramedRead` on the same thread needs a second while the first is out).
const KEPT: usize = 4;

thread_local! {
    /// Zeroed buffers for the reads on this thread, each `MAX_READ` bytes.
    static SCRATCH: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed buffer of `MAX_READ` bytes: one kept on this thread, or a new one.
fn take_scratch() -> Box<[u8]> {
    SCRATCH
        .try_with(|kept| kept.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; MAX_READ].into_boxed_slice())
}

/// Gives a zeroed buffer back (dropped when the thread keeps enough, or is ending).
fn give_back(scratch: Box<[u8]>) {
    let _ = SCRATCH.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() < KEPT {
            kept.push(scratch);
        }
    });
}

/// Reads once from `io` and appends what it read to `buffer`; `Ok(0)` at its end.
///
/// The read goes into a buffer zeroed once and kept on the thread, and what was read is
/// zeroed again once copied out, so every read is given zeros (as the crates.io crate's
/// fresh array gave it) and no connection's bytes stay behind for another's reader.
/// A reader that writes into the buffer and then answers `Pending` is taken to have
/// written nothing (no reader in the dependency graph does).
pub(crate) fn poll_read_into<T: AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buffer: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut scratch = take_scratch();
    let room = buffer.capacity() - buffer.len();
    let size = room.clamp(MIN_READ, MAX_READ);
    let polled = Pin::new(io).poll_read(cx, &mut scratch[..size]);
    let polled = match polled {
        Poll::Ready(Ok(n)) if n <= size => {
            let read = &mut scratch[..n];
            buffer.extend_from_slice(read);
            read.fill(0);
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Ok(n)) => {
            scratch[..size].fill(0);
            Poll::Ready(Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("a reader reported {n} bytes read into a buffer of {size}"),
            )))
        }
        Poll::Ready(Err(e)) => {
            scratch[..size].fill(0);
            Poll::Ready(Err(e))
        }
        Poll::Pending => Poll::Pending,
    };
    give_back(scratch);
    polled
}

/// The next frame: one already in `buffer`, or one completed by reading from `io`.
/// `None` at the reader's end with nothing left over; an `UnexpectedEof` error when
/// bytes are left that make no frame.
pub(crate) fn poll_frame<T, D>(
    io: &mut T,
    decoder: &mut D,
    buffer: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<D::Item, D::Error>>>
where
    T: AsyncRead + Unpin,
    D: Decoder,
{
    loop {
        if let Some(item) = decoder.decode(buffer)? {
            return Poll::Ready(Some(Ok(item)));
        }
        if ready!(poll_read_into(io, cx, buffer))? > 0 {
            continue;
        }
        if buffer.is_empty() {
            return Poll::Ready(None);
        }
        // At the end, as the crates.io crate does: `decode` once more, then `decode_eof`.
        if let Some(item) = decoder.decode(buffer)? {
            return Poll::Ready(Some(Ok(item)));
        }
        return Poll::Ready(match decoder.decode_eof(buffer)? {
            Some(item) => Some(Ok(item)),
            None if buffer.is_empty() => None,
            None => Some(Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "bytes remaining in stream",
            )
            .into())),
        });
    }
}

/// Writes from the front of `buffer` until it holds less than `below` bytes (all of it
/// for `below` = 1).
fn poll_drain<T: AsyncWrite + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buffer: &mut BytesMut,
    below: usize,
) -> Poll<io::Result<()>> {
    while !buffer.is_empty() && buffer.len() >= below {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, buffer))?;
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                ErrorKind::WriteZero,
                "the writer accepted no bytes",
            )));
        }
        if n > buffer.len() {
            return Poll::Ready(Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("a writer reported {n} bytes written of {}", buffer.len()),
            )));
        }
        buffer.advance(n);
    }
    Poll::Ready(Ok(()))
}

/// `Sink::poll_ready`: room once `buffer` holds less than `high_water_mark` bytes.
pub(crate) fn poll_ready<T: AsyncWrite + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buffer: &mut BytesMut,
    high_water_mark: usize,
) -> Poll<io::Result<()>> {
    poll_drain(io, cx, buffer, high_water_mark)
}

/// `Sink::poll_flush`: everything buffered written, then `io` flushed.
pub(crate) fn poll_flush<T: AsyncWrite + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buffer: &mut BytesMut,
) -> Poll<io::Result<()>> {
    ready!(poll_drain(io, cx, buffer, 1))?;
    Pin::new(io).poll_flush(cx)
}

/// `Sink::poll_close`: flushed, then `io` closed.
pub(crate) fn poll_close<T: AsyncWrite + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buffer: &mut BytesMut,
) -> Poll<io::Result<()>> {
    ready!(poll_flush(io, cx, buffer))?;
    Pin::new(io).poll_close(cx)
}
