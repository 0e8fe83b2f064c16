//! Reading into the frame buffer and writing out of it.

use std::cell::Cell;
use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures_util::io::{AsyncRead, AsyncWrite};

use crate::Decoder;

/// How much one read asks for: a whole Noise frame (65 535 bytes and its length).
pub(crate) const READ_SIZE: usize = 64 * 1024;

thread_local! {
    /// The buffer reads on this thread go into, zeroed once. Taken out while a read runs
    /// (a reader that itself reads through a `FramedRead` on the same thread gets a
    /// buffer of its own for that read).
    static SCRATCH: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// Reads once from `io` and appends what it read to `buffer`; `Ok(0)` at its end.
pub(crate) fn poll_read_into<T: AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    buffer: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut scratch = SCRATCH
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; READ_SIZE].into_boxed_slice());
    let polled = match Pin::new(io).poll_read(cx, &mut scratch) {
        Poll::Ready(Ok(n)) => Poll::Ready(match scratch.get(..n) {
            Some(read) => {
                buffer.extend_from_slice(read);
                Ok(n)
            }
            None => Err(io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "a reader reported {n} bytes read into a buffer of {}",
                    scratch.len()
                ),
            )),
        }),
        other => other,
    };
    // Gone only while the thread is being torn down: the buffer is then dropped.
    let _ = SCRATCH.try_with(|cell| cell.set(Some(scratch)));
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
