//! Every size limit of Blocktree's names, credentials and wire formats, in one place.
//!
//! Decoders refuse inputs over these limits before doing any work proportional to them;
//! `protocols::limits` re-exports this module so that later protocols add theirs here too.

/// Longest path segment, in bytes of UTF-8.
pub const MAX_SEGMENT_LEN: usize = 255;

/// Longest path in its text form, in bytes, including every `/`.
pub const MAX_PATH_LEN: usize = 4096;

/// Most links in one writecap chain, root grant included.
pub const MAX_CHAIN_LEN: usize = 8;

/// Most entries in one revocation list.
pub const MAX_REVOCATIONS: usize = 16_384;

/// Most issuers whose revocation lists a node takes from the overlay (lists of the roots
/// of its own writecaps are always taken): anyone can make keys and sign lists, and
/// every node keeps what it takes (at most this many lists of at most
/// [`MAX_REVOCATION_LIST_BYTES`] each).
pub const MAX_REVOCATION_ISSUERS: usize = 256;

/// Largest encoded principal (a tagged 32-byte hash).
pub const MAX_PRINCIPAL_BYTES: usize = 64;

/// Largest encoded path.
pub const MAX_PATH_BYTES: usize = MAX_PATH_LEN + 64;

/// Largest encoded writecap (one link).
pub const MAX_WRITECAP_BYTES: usize = 2 * MAX_PATH_BYTES + 512;

/// Largest encoded writecap chain.
pub const MAX_CHAIN_BYTES: usize = MAX_CHAIN_LEN * MAX_WRITECAP_BYTES + 64;

/// Largest encoded revocation list.
pub const MAX_REVOCATION_LIST_BYTES: usize = MAX_REVOCATIONS * 48 + 1024;

/// Largest encoded readcap.
pub const MAX_READCAP_BYTES: usize = 256;

/// Largest encoded public identity (signing key, encryption key, binding signature).
pub const MAX_IDENTITY_BYTES: usize = 256;

/// Largest sealed key file on disk.
pub const MAX_SEALED_FILE_BYTES: usize = 64 * 1024;

/// Largest message any Blocktree protocol accepts in one frame.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Most addresses in one path record.
pub const MAX_RECORD_ADDRESSES: usize = 16;

/// Longest multiaddr in a path record, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 256;

/// Largest encoded path record (path, node key, addresses, chain, signature).
pub const MAX_PATH_RECORD_BYTES: usize =
    MAX_PATH_BYTES + MAX_RECORD_ADDRESSES * (MAX_ADDRESS_BYTES + 8) + MAX_CHAIN_BYTES + 256;

/// Longest a path record may stay valid, in seconds, counted from when it is checked:
/// records far in the future are refused so a stolen one cannot live for ever.
pub const MAX_RECORD_TTL_SECS: u64 = 24 * 3600;

/// Largest encrypted chunk the block protocol carries: a 1 MiB plaintext chunk plus its
/// nonce and authentication tag.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024 + 64;

/// Largest signed inode version the block protocol carries, in bytes.
pub const MAX_INODE_BYTES: usize = 1024 * 1024;

/// Most chunk and version ids one block-protocol `Have` asks about, both lists together.
pub const MAX_HAVE_ITEMS: usize = 1024;

/// Most signed versions of one inode in a block-protocol answer.
pub const MAX_VERSIONS_PER_INODE: usize = 64;

/// Longest reason text of a block-protocol refusal, in bytes of UTF-8.
pub const MAX_REASON_BYTES: usize = 512;

/// Largest encoded block-protocol request: the largest chunk, its id and the framing of
/// the message (a full `Have` is about 72 KiB).
pub const MAX_BLOCK_REQUEST_BYTES: usize = MAX_CHUNK_BYTES + 1024;

/// Largest encoded block-protocol response: the general [`MAX_MESSAGE_BYTES`]. It holds
/// any one chunk, but not [`MAX_VERSIONS_PER_INODE`] versions of [`MAX_INODE_BYTES`]:
/// a replica answers with as many of an inode's versions as fit.
pub const MAX_BLOCK_RESPONSE_BYTES: usize = MAX_MESSAGE_BYTES;
