//! The first bytes of an inbound connection, which decide whether the overlay swarm or
//! the stream swarm takes it (`dht::streams`): never a panic; only the exact preamble
//! goes to the stream swarm; the decision depends on a prefix only; and the connection
//! reads back every byte, in whatever pieces it arrives.

#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use dht::streams::{Lane, Preamble, STREAMS_NOISE, read_preamble, sort, stream_preamble};
use futures::{AsyncRead, AsyncReadExt};
use libfuzzer_sys::fuzz_target;

/// Hands out the bytes in pieces of the sizes the input chose.
struct Pieces<'a> {
    bytes: &'a [u8],
    sizes: &'a [u8],
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let size = match this.sizes.split_first() {
            Some((&size, rest)) => {
                this.sizes = rest;
                usize::from(size).max(1)
            }
            None => this.bytes.len(),
        };
        let n = size.min(buf.len()).min(this.bytes.len());
        buf[..n].copy_from_slice(&this.bytes[..n]);
        this.bytes = &this.bytes[n..];
        Poll::Ready(Ok(n))
    }
}

fuzz_target!(|data: &[u8]| {
    let preamble = stream_preamble(STREAMS_NOISE);
    // The first byte chooses: the preamble in front of the rest, or the rest alone; the
    // next eight, the sizes of the pieces.
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let (sizes, body) = rest.split_at(rest.len().min(8));
    let sent = if choice & 1 == 1 {
        [preamble.as_slice(), body].concat()
    } else {
        body.to_vec()
    };
    let decided = sort(&sent, &preamble);
    if decided == Preamble::Sorted(Lane::Streams) {
        assert!(sent.starts_with(&preamble));
    }
    if let Preamble::Sorted(lane) = decided {
        let mut longer = sent.clone();
        longer.push(0);
        assert_eq!(sort(&longer, &preamble), Preamble::Sorted(lane));
    }
    let (lane, mut rewound) = futures::executor::block_on(read_preamble(
        Pieces {
            bytes: &sent,
            sizes,
        },
        &preamble,
    ));
    assert_eq!(lane == Lane::Streams, sent.starts_with(&preamble));
    let mut back = Vec::new();
    futures::executor::block_on(rewound.read_to_end(&mut back)).expect("reads");
    assert_eq!(back, sent);
});
