//! The control API: a Unix socket in the data directory (mode 0600) that the CLI uses to
//! talk to the running daemon.
//!
//! Format: the client connects, writes one request as a line of JSON, and reads one
//! response as a line of JSON; then the connection closes. Requests are at most 64 KiB.
//! `subscribe` and `listen` keep the connection open after their response and send one
//! line per event until the client closes it.
//!
//! ```text
//! {"cmd":"status"}                          -> {"ok":true,"result":{Status, "actors":{…}}}
//! {"cmd":"peers"}                           -> {"ok":true,"result":[PeerInfo…]}
//! {"cmd":"register","path":"/<root>/a"}     -> {"ok":true,"result":{Registered}}
//! {"cmd":"resolve","path":"/<root>/a/b"}    -> {"ok":true,"result":{Resolution}}
//! {"cmd":"tell","to":"/<root>/a","payload":<json>,"label":"…",…}  -> {"ok":true,…}
//! {"cmd":"ask", …, "timeout_ms":5000}       -> {"ok":true,"result":{Reply}}
//! {"cmd":"publish","to":"/<root>/topic",…}  -> {"ok":true,…}
//! {"cmd":"subscribe","topic":"/<root>/t"}   -> {"ok":true,…} then {Event} lines
//! {"cmd":"listen","path":"/<root>/a"}       -> {"ok":true,…} then {Event} lines
//! any failure                               -> {"ok":false,"error":"…"}
//! ```

use std::path::{Path as FsPath, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The socket's file name in the data directory.
pub(crate) const SOCKET: &str = "control.sock";

/// Largest request line: room for a message as large as a command line can carry (a
/// 64 KiB line refused `btnode tell` of 100 KB); the socket is its owner's alone.
const MAX_REQUEST: u64 = 16 * 1024 * 1024;

/// Largest response the CLI reads.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub(crate) enum Request {
    Status,
    Peers,
    Register {
        path: String,
    },
    Resolve {
        path: String,
    },
    Tell(Outgoing),
    Ask(Outgoing),
    Publish(Outgoing),
    Subscribe {
        topic: String,
    },
    Listen {
        path: String,
    },
    Fs(crate::files::FsRequest),
    /// A revocation list signed by the CLI (wire-encoded): put it in force and publish it.
    Revoke {
        list: Vec<u8>,
    },
}

/// A message the CLI asks the daemon to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Outgoing {
    /// The receiving path (or topic).
    pub(crate) to: String,
    /// The payload as JSON; it travels as CBOR.
    pub(crate) payload: serde_json::Value,
    /// The label.
    pub(crate) label: String,
    /// The protocol (empty: untyped).
    #[serde(default)]
    pub(crate) protocol: String,
    /// The role the sender claims in it.
    #[serde(default)]
    pub(crate) role: String,
    /// The session (default: a new one).
    #[serde(default)]
    pub(crate) session: Option<u64>,
    /// Send as this path (default: `<prefix of the first writecap>/cli`).
    #[serde(default)]
    pub(crate) from: Option<String>,
    /// How long an ask waits, in milliseconds.
    #[serde(default)]
    pub(crate) timeout_ms: Option<u64>,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl Response {
    pub(crate) fn ok(result: impl Serialize) -> Self {
        match serde_json::to_value(result) {
            Ok(value) => Response {
                ok: true,
                result: Some(value),
                error: None,
            },
            Err(e) => Response::err(format!("cannot encode the answer: {e}")),
        }
    }

    pub(crate) fn err(error: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(error.to_string()),
        }
    }
}

/// Binds the socket, replacing a stale one; refuses when a daemon already answers there.
pub(crate) async fn bind(data_dir: &FsPath) -> anyhow::Result<(UnixListener, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(SOCKET);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            bail!(
                "a btnode daemon is already running with data directory {} (its socket {} answers)",
                data_dir.display(),
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // Created owner-only: a socket made with the process's umask and restricted after
    // was open to others in between (where the data directory itself is not private).
    let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let bound = UnixListener::bind(&path);
    rustix::process::umask(umask);
    let listener =
        bound.with_context(|| format!("cannot create the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok((listener, path))
}

/// How long a connection may take to send its request: one that sends nothing would
/// otherwise hold one of the daemon's connection slots for ever.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads one request from a connection.
pub(crate) async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| format!("no request within {} s", REQUEST_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if !line.ends_with('\n') {
        return Err(format!(
            "the request must be one line of JSON of at most {MAX_REQUEST} bytes"
        ));
    }
    serde_json::from_str(&line).map_err(|e| format!("bad request: {e}"))
}

/// Writes one response.
pub(crate) async fn write_response(stream: &mut UnixStream, response: &Response) {
    let Ok(mut line) = serde_json::to_vec(response) else {
        return;
    };
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
}

/// Writes one event line of a streaming answer; false once the client has gone.
pub(crate) async fn write_event(
    stream: &mut tokio::net::unix::OwnedWriteHalf,
    event: &impl Serialize,
) -> bool {
    let Ok(mut line) = serde_json::to_vec(event) else {
        return true;
    };
    line.push(b'\n');
    stream.write_all(&line).await.is_ok()
}

/// Sends a streaming `request` (subscribe, listen) and calls `on_event` with its answer
/// (e.g. `{"subscribed": topic}`, once it is in place) and then with every event line,
/// until the daemon closes the connection or `on_event` fails.
pub(crate) async fn call_streaming(
    data_dir: &FsPath,
    request: &Request,
    mut on_event: impl FnMut(serde_json::Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // A stream of events has no total size; the daemon is this user's own.
    let (first, mut lines) = open(data_dir, request, u64::MAX).await?;
    on_event(check(&first)?)?;
    while let Some(line) = lines.next_line().await? {
        let event: serde_json::Value =
            serde_json::from_str(&line).context("the daemon sent an event that is not JSON")?;
        on_event(event)?;
    }
    Ok(())
}

async fn open(
    data_dir: &FsPath,
    request: &Request,
    max: u64,
) -> anyhow::Result<(
    String,
    tokio::io::Lines<BufReader<tokio::io::Take<UnixStream>>>,
)> {
    let path = data_dir.join(SOCKET);
    let mut stream = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no btnode daemon answers at {} (start one with `btnode run`)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    // A daemon that turns the connection away (busy) answers and closes at once, maybe
    // before the request is written: its answer is read whether the write went through
    // or not, and the write's error counts only when there is none.
    let written = stream.write_all(&line).await;
    let mut lines = BufReader::new(stream.take(max)).lines();
    let first = match (lines.next_line().await, written) {
        (Ok(Some(first)), _) => first,
        (_, Err(e)) => {
            return Err(anyhow::Error::new(e).context("cannot send the request to the daemon"));
        }
        (Ok(None), Ok(())) => anyhow::bail!("the daemon closed the connection without answering"),
        (Err(e), Ok(())) => return Err(e.into()),
    };
    Ok((first, lines))
}

fn check(answer: &str) -> anyhow::Result<serde_json::Value> {
    let response: Response =
        serde_json::from_str(answer).context("the daemon's answer is not valid JSON")?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (true, None, _) => Ok(serde_json::Value::Null),
        (false, _, error) => bail!("{}", error.unwrap_or_else(|| "unknown error".into())),
    }
}

/// Sends `request` to the daemon of `data_dir` and returns its result.
pub(crate) async fn call(
    data_dir: &FsPath,
    request: &Request,
) -> anyhow::Result<serde_json::Value> {
    let (first, _) = open(data_dir, request, MAX_RESPONSE).await?;
    check(&first)
}
