//! The daemon's side of `btnode tell`, `ask`, `pub`, `sub` and `listen`: payloads
//! arrive as JSON and travel as CBOR; what arrives is shown as JSON again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use btnode::actor::{Actor, Context, Failure, Incoming, Runtime, Sender, Spec};
use keys::{Chain, Path};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use btnode::payload::{from_json, to_json};

use crate::caps;
use crate::control::{self, Outgoing, Response};

/// Events one streaming connection may have waiting before the actor waits for it.
const EVENT_QUEUE: usize = 1024;

/// A message as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    kind: &'static str,
    from: String,
    protocol: String,
    role: String,
    session: u64,
    label: String,
    payload: serde_json::Value,
}

pub(crate) struct Messaging {
    runtime: Runtime,
    data_dir: PathBuf,
    principal: keys::Principal,
}

impl Messaging {
    pub(crate) fn new(runtime: Runtime, data_dir: PathBuf, principal: keys::Principal) -> Self {
        Messaging {
            runtime,
            data_dir,
            principal,
        }
    }

    /// Takes up writecaps installed since the daemon started.
    fn refresh(&self) {
        for chain in caps::installed(&self.data_dir, &self.principal, keys::now()) {
            self.runtime.add_chain(chain);
        }
    }

    /// `<the shortest prefix this node holds>/cli`.
    fn default_from(&self) -> Option<Path> {
        self.runtime
            .chains()
            .iter()
            .filter_map(Chain::prefix)
            .min_by_key(|p| p.to_string().len())
            .and_then(|p| p.join("cli").ok())
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn sender(&self, from: Option<&str>) -> Result<Sender, String> {
        self.refresh();
        let from = match from {
            Some(text) => text
                .parse::<Path>()
                .map_err(|e| format!("--from {text:?} is not a path: {e}"))?,
            None => self.default_from().ok_or(
                "this node holds no writecap to send from: install one with `btnode cap install`",
            )?,
        };
        self.runtime.sender(from).map_err(|e| e.to_string())
    }

    fn prepare(&self, m: &Outgoing) -> Result<(Sender, Path, Vec<u8>), String> {
        let sender = self.sender(m.from.as_deref())?;
        let to =
            m.to.parse::<Path>()
                .map_err(|e| format!("{:?} is not a path: {e}", m.to))?;
        let payload =
            from_json(&m.payload).map_err(|e| format!("cannot encode the payload: {e}"))?;
        Ok((sender, to, payload))
    }

    pub(crate) async fn tell(&self, m: Outgoing) -> Response {
        let (sender, to, payload) = match self.prepare(&m) {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        let session = m.session.unwrap_or_else(rand::random);
        let mut session = sender.unchecked(to, &m.protocol, &m.role, session);
        match session.tell(&m.label, &payload).await {
            Ok(()) => Response::ok(serde_json::json!({ "session": session.id() })),
            Err(e) => Response::err(e),
        }
    }

    pub(crate) async fn ask(&self, m: Outgoing) -> Response {
        let (sender, to, payload) = match self.prepare(&m) {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        let timeout = Duration::from_millis(m.timeout_ms.unwrap_or(10_000));
        let session = m.session.unwrap_or_else(rand::random);
        let mut session = sender.unchecked(to, &m.protocol, &m.role, session);
        match session.ask_within(&m.label, &payload, timeout).await {
            Ok(reply) => Response::ok(serde_json::json!({
                "from": reply.from.to_string(),
                "label": reply.label,
                "payload": to_json(&reply.payload),
                "session": session.id(),
            })),
            Err(e) => Response::err(e),
        }
    }

    pub(crate) async fn publish(&self, m: Outgoing) -> Response {
        let (sender, topic, payload) = match self.prepare(&m) {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        let session = m.session.unwrap_or_else(rand::random);
        let mut session = sender.unchecked(topic, &m.protocol, &m.role, session);
        match session.publish(&m.label, &payload).await {
            Ok(()) => Response::ok(serde_json::json!({ "session": session.id() })),
            Err(e) => Response::err(e),
        }
    }

    /// Streams every publication on `topic` to the connection until it closes.
    pub(crate) async fn subscribe(&self, topic: &str, stream: UnixStream) {
        let (mut reader, mut writer) = stream.into_split();
        let topic = match topic.parse::<Path>() {
            Ok(t) => t,
            Err(e) => {
                let answer = Response::err(format!("{topic:?} is not a path: {e}"));
                control::write_event(&mut writer, &answer).await;
                return;
            }
        };
        let mut subscription = match self.runtime.subscribe(&topic, None).await {
            Ok(s) => s,
            Err(e) => {
                control::write_event(&mut writer, &Response::err(e)).await;
                return;
            }
        };
        let answer = Response::ok(serde_json::json!({ "subscribed": topic.to_string() }));
        if !control::write_event(&mut writer, &answer).await {
            return;
        }
        let mut byte = [0u8; 1];
        loop {
            tokio::select! {
                published = subscription.recv() => {
                    let Some(p) = published else { return };
                    let event = Event {
                        kind: "publish",
                        from: p.from.to_string(),
                        protocol: p.protocol,
                        role: p.role,
                        session: p.session,
                        label: p.label,
                        payload: to_json(&p.payload),
                    };
                    if !control::write_event(&mut writer, &event).await {
                        return;
                    }
                }
                _ = reader.read(&mut byte) => return,
            }
        }
    }

    /// Runs an actor at `path` for as long as the connection stays open: it shows every
    /// message it gets and answers asks by echoing their payload (label `echo`).
    pub(crate) async fn listen(&self, path: &str, stream: UnixStream) {
        let (mut reader, mut writer) = stream.into_split();
        let path = match path.parse::<Path>() {
            Ok(p) => p,
            Err(e) => {
                let answer = Response::err(format!("{path:?} is not a path: {e}"));
                control::write_event(&mut writer, &answer).await;
                return;
            }
        };
        self.refresh();
        let (events, mut received) = mpsc::channel(EVENT_QUEUE);
        let events = Arc::new(events);
        let spec = Spec::new(path.clone()).untyped();
        if let Err(e) = self
            .runtime
            .spawn(spec, move || Listener {
                events: events.clone(),
            })
            .await
        {
            control::write_event(&mut writer, &Response::err(e)).await;
            return;
        }
        let answer = Response::ok(serde_json::json!({ "listening": path.to_string() }));
        let mut byte = [0u8; 1];
        if control::write_event(&mut writer, &answer).await {
            loop {
                tokio::select! {
                    event = received.recv() => {
                        let Some(event) = event else { break };
                        if !control::write_event(&mut writer, &event).await {
                            break;
                        }
                    }
                    _ = reader.read(&mut byte) => break,
                }
            }
        }
        self.runtime.stop(&path);
    }
}

/// The actor behind `btnode listen`.
struct Listener {
    events: Arc<mpsc::Sender<Event>>,
}

impl Actor for Listener {
    async fn handle(&mut self, _ctx: &Context, mut message: Incoming) -> Result<(), Failure> {
        let reply = message.take_reply();
        let event = Event {
            kind: if reply.is_some() { "ask" } else { "tell" },
            from: message.from().to_string(),
            protocol: message.protocol().to_string(),
            role: message.role().to_string(),
            session: message.session,
            label: message.label.into(),
            payload: to_json(&message.payload),
        };
        if let Some(reply) = reply {
            reply.send("echo", &message.payload).await?;
        }
        // The CLI has gone: the actor stops with the connection.
        let _ = self.events.send(event).await;
        Ok(())
    }
}
