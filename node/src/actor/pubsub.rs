//! Pub-sub: gossipsub topics named by paths. A publication carries the publishing
//! actor's path and the chain that lets the publishing node speak for it; gossipsub signs
//! it with the node's key. Every subscribing node checks the chain against that signer
//! and the message against the topic's protocol before it delivers or forwards it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use keys::Path;
use protocols::actor::{Publication, Refusal};
use protocols::session::{Protocol, Violation};
use protocols::wire;
use tokio::sync::mpsc;

use super::sessions::{Served, Sessions};
use super::{Inner, SendError, other_role, read};

/// Publications one subscription holds before new ones are dropped (best effort).
const SUBSCRIPTION_QUEUE: usize = 1024;
/// Payload bytes one subscription holds (beyond one publication, however large) before
/// new ones are dropped: a count alone let a peer's publications of 4 MiB hold 4 GiB for
/// a slow subscriber.
const SUBSCRIPTION_BYTES: usize = 16 << 20;

/// A publication delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The topic.
    pub topic: String,
    /// The publishing actor.
    pub from: Arc<Path>,
    /// The protocol (empty: untyped).
    pub protocol: String,
    /// The role the publisher claims.
    pub role: String,
    /// The session.
    pub session: u64,
    /// The label.
    pub label: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Publications on one topic, as they arrive. Dropping the last subscription of a topic
/// leaves it.
#[derive(Debug)]
pub struct Subscription {
    topic: String,
    receiver: mpsc::Receiver<Published>,
    /// Payload bytes queued for it.
    queued: Arc<AtomicUsize>,
    inner: Weak<Inner>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.receiver.close();
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut topics = inner.topics.lock();
        let empty = topics.get_mut(&self.topic).is_some_and(|t| {
            t.subscribers.retain(|s| !s.sender.is_closed());
            t.subscribers.is_empty()
        });
        if empty {
            topics.remove(&self.topic);
            drop(topics);
            let node = inner.node.clone();
            let topic = self.topic.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = node.unsubscribe(topic).await;
                });
            }
        }
    }
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next publication; `None` once the runtime is gone.
    pub async fn recv(&mut self) -> Option<Published> {
        let published = self.receiver.recv().await?;
        self.queued
            .fetch_sub(published.payload.len(), Ordering::Relaxed);
        Some(published)
    }
}

/// A local subscriber's queue.
struct Subscriber {
    sender: mpsc::Sender<Published>,
    /// Payload bytes queued (see [`SUBSCRIPTION_BYTES`]).
    queued: Arc<AtomicUsize>,
}

struct Topic {
    sessions: Arc<Sessions>,
    protocol: String,
    subscribers: Vec<Subscriber>,
}

/// The topics this node subscribes to.
#[derive(Default)]
pub(crate) struct Topics {
    topics: Mutex<HashMap<String, Topic>>,
    pub(crate) delivered: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl Topics {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks `publication` against the topic's sessions and hands it to every local
    /// subscriber. Returns the number of subscribers reached, or the refusal.
    fn deliver(
        &self,
        topic: &str,
        from: &Arc<Path>,
        node: &libp2p::PeerId,
        publication: &Publication,
    ) -> Result<usize, Option<protocols::actor::Refusal>> {
        let mut topics = self.lock();
        let Some(entry) = topics.get_mut(topic) else {
            return Err(None);
        };
        let protocol: Arc<str> = Arc::from(publication.protocol.as_str());
        // A topic subscribed without a protocol observes everything, unchecked.
        if !entry.protocol.is_empty() {
            let peer = entry
                .sessions
                .peer(from, &protocol, &publication.role, node);
            // Gossip is unordered and a subscriber may come after a session began: a
            // message out of its session's order is not delivered here, and not
            // forwarded by this node, but held against no one. What no order can
            // excuse (a protocol the topic does not speak, a role the publisher cannot
            // play) is rejected.
            let checked = entry.sessions.check_receive(
                peer,
                &protocol,
                publication.session,
                &publication.role,
                &publication.label,
            );
            match checked {
                Ok(()) => {}
                Err(
                    refusal @ (Refusal::UnknownProtocol { .. }
                    | Refusal::Violation(Violation::WrongRole { .. })),
                ) => return Err(Some(refusal)),
                Err(_) => {
                    self.out_of_order.fetch_add(1, Ordering::Relaxed);
                    return Err(None);
                }
            }
        }
        entry.subscribers.retain(|s| !s.sender.is_closed());
        let mut reached = 0;
        let size = publication.payload.len();
        for subscriber in &entry.subscribers {
            // Counted before it is sent (the subscriber may take it at once); given back
            // if it was not.
            let before = subscriber.queued.fetch_add(size, Ordering::Relaxed);
            if before > 0 && before + size > SUBSCRIPTION_BYTES {
                subscriber.queued.fetch_sub(size, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let published = Published {
                topic: topic.to_string(),
                from: from.clone(),
                protocol: publication.protocol.clone(),
                role: publication.role.clone(),
                session: publication.session,
                label: publication.label.clone(),
                payload: publication.payload.clone(),
            };
            match subscriber.sender.try_send(published) {
                Ok(()) => reached += 1,
                Err(_) => {
                    subscriber.queued.fetch_sub(size, Ordering::Relaxed);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.delivered.fetch_add(reached as u64, Ordering::Relaxed);
        Ok(reached)
    }
}

pub(super) async fn subscribe(
    inner: &Arc<Inner>,
    topic: &Path,
    protocol: Option<(Arc<Protocol>, &str)>,
) -> Result<Subscription, SendError> {
    let name = topic.to_string();
    let wanted = protocol
        .as_ref()
        .map(|(p, _)| p.name().to_string())
        .unwrap_or_default();
    let (sender, receiver) = mpsc::channel(SUBSCRIPTION_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let sender = Subscriber {
        sender,
        queued: queued.clone(),
    };
    let new = {
        let mut topics = inner.topics.lock();
        match topics.get_mut(&name) {
            Some(entry) => {
                if entry.protocol != wanted {
                    return Err(SendError::Protocol(format!(
                        "{name} is already subscribed with protocol {:?}",
                        entry.protocol
                    )));
                }
                entry.subscribers.push(sender);
                false
            }
            None => {
                let mut served = HashMap::new();
                if let Some((protocol, role)) = &protocol {
                    let peer_role = other_role(protocol, role).ok_or_else(|| {
                        SendError::Protocol(format!(
                            "{} is not a two-party protocol with role {role}",
                            protocol.name()
                        ))
                    })?;
                    served.insert(
                        protocol.name().to_string(),
                        Served {
                            protocol: protocol.clone(),
                            role: (*role).to_string(),
                            peer_role,
                        },
                    );
                }
                let sessions = Sessions::new(
                    name.clone(),
                    served,
                    protocol.is_none(),
                    inner.config.max_sessions,
                );
                topics.insert(
                    name.clone(),
                    Topic {
                        sessions: Arc::new(sessions),
                        protocol: wanted,
                        subscribers: vec![sender],
                    },
                );
                true
            }
        }
    };
    if new && let Err(e) = inner.node.subscribe(name.clone()).await {
        inner.topics.lock().remove(&name);
        return Err(SendError::Unreachable {
            path: name,
            reason: e.to_string(),
        });
    }
    Ok(Subscription {
        topic: name,
        receiver,
        queued,
        inner: Arc::downgrade(inner),
    })
}

/// The protocol, role and session a publication claims.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim<'a> {
    pub(super) protocol: &'a str,
    pub(super) role: &'a str,
    pub(super) session: u64,
}

pub(super) async fn publish(
    inner: &Arc<Inner>,
    from: &Arc<Path>,
    topic: &Path,
    claim: Claim<'_>,
    label: &str,
    payload: &[u8],
) -> Result<(), SendError> {
    let chain = inner
        .chain_for(from)
        .ok_or_else(|| SendError::NotAuthorized(from.to_string()))?;
    let publication = Publication {
        from: (**from).clone(),
        chain,
        protocol: claim.protocol.into(),
        role: claim.role.into(),
        session: claim.session,
        label: label.into(),
        payload: payload.into(),
    };
    let bytes = wire::encode(&publication).map_err(|e| SendError::Encode(e.to_string()))?;
    let name = topic.to_string();
    // Subscribers on this node hear it without the network.
    match inner
        .topics
        .deliver(&name, from, &inner.peer_id, &publication)
    {
        Ok(_) | Err(None) => {}
        Err(Some(refusal)) => return Err(SendError::Refused(refusal)),
    }
    inner
        .node
        .publish(name.clone(), bytes)
        .await
        .map_err(|e| SendError::Unreachable {
            path: name,
            reason: e.to_string(),
        })
}

/// Checks every publication gossipsub hands over and gives gossipsub the verdict.
pub(super) async fn receive(inner: Weak<Inner>, mut gossip: mpsc::Receiver<dht::Gossip>) {
    while let Some(message) = gossip.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let checked = check(&inner, &message);
        let verdict = match checked {
            Ok(verdict) => verdict,
            Err(blame) => {
                inner.topics.rejected.fetch_add(1, Ordering::Relaxed);
                match blame {
                    // Not its author: anyone can sign as a new author for each message.
                    // Honest peers pass on only what they checked, and would have
                    // refused this as we do.
                    Blame::Relay => inner.penalise(message.propagated_by),
                    // Refused by what this node holds (its protocol for the topic, its
                    // revocation lists, its clock): a relay may have taken it in good
                    // faith, so only an author that sent it itself is counted.
                    Blame::Author if message.source == message.propagated_by => {
                        inner.penalise(message.source)
                    }
                    Blame::Author => {}
                }
                dht::Verdict::Reject
            }
        };
        if inner.node.validate(&message, verdict).await.is_err() {
            return;
        }
    }
}

/// Who a rejected message is counted against (see [`receive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// Any node would refuse it (malformed, forged, a chain that covers nothing it
    /// claims): the peer that passed it on.
    Relay,
    /// Refused for what this node holds; its author, if it sent it itself.
    Author,
}

/// The verdict on a message, or who is to blame for its rejection.
fn check(inner: &Inner, message: &dht::Gossip) -> Result<dht::Verdict, Blame> {
    if message.topic == super::REVOCATION_TOPIC {
        return check_revocations(inner, message);
    }
    inner.refresh_revocations();
    let publication: Publication = match wire::decode(&message.data) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(source = %message.source, error = %e, "rejected a malformed publication");
            return Err(Blame::Relay);
        }
    };
    let Some(principal) = keys::PublicKey::from_peer_id(&message.source).map(|k| k.principal())
    else {
        return Err(Blame::Relay);
    };
    let now = keys::now();
    // Whether the chain failed for what this node holds (a clock, revocation lists).
    let mut here = false;
    let authorized = read(&inner.verified).authorizes(&principal, &publication.from, now) || {
        // Verified before the shared cache is locked.
        let checked_at = inner.config.revocations.generation();
        let checked = keys::VerifiedChains::verify(
            &principal,
            &publication.chain,
            now,
            &inner.config.revocations.read(),
        );
        here = matches!(
            checked,
            Err(keys::WritecapError::Expired { .. }
                | keys::WritecapError::NotYetValid { .. }
                | keys::WritecapError::Revoked { .. })
        );
        checked.is_ok_and(|checked| {
            let authorizes = checked.authorizes(&publication.from, now);
            let (verified, remembered) = inner.remember_checked([checked], checked_at, now);
            if remembered.is_ok() {
                // Checked again under the lock against lists taken meanwhile.
                verified.authorizes(&principal, &publication.from, now)
            } else {
                // No room to remember it (the cache keeps the chains of peers whose
                // streams are open): it holds if no list came since it was checked.
                authorizes && inner.config.revocations.generation() == checked_at
            }
        })
    };
    if !authorized {
        tracing::info!(source = %message.source, from = %publication.from, "rejected a publication from an impostor");
        return Err(if here { Blame::Author } else { Blame::Relay });
    }
    let from = Arc::new(publication.from.clone());
    match inner
        .topics
        .deliver(&message.topic, &from, &message.source, &publication)
    {
        Ok(_) => Ok(dht::Verdict::Accept),
        Err(None) => Ok(dht::Verdict::Ignore),
        Err(Some(refusal)) => {
            // Checked against this node's protocol for the topic: a relay that
            // subscribed without one passes on what it cannot check.
            tracing::info!(source = %message.source, refusal = %refusal, "rejected a publication");
            Err(Blame::Author)
        }
    }
}

/// A revocation list from the overlay: taken and passed on when it is newer than the
/// issuer's list in force, ignored when not, and its sender penalised when it is not a
/// list or not signed by its issuer.
fn check_revocations(inner: &Inner, message: &dht::Gossip) -> Result<dht::Verdict, Blame> {
    let list: keys::RevocationList = match wire::decode(&message.data) {
        Ok(list) => list,
        Err(e) => {
            tracing::info!(source = %message.source, error = %e, "rejected a malformed revocation list");
            return Err(Blame::Relay);
        }
    };
    let issuer = list.issuer();
    let held = inner.config.revocations.read();
    // Past the bound, a list is taken only from an issuer of some link of a chain this
    // node holds, or of one it has verified in a tree it belongs to: anyone can sign
    // lists, and lists of made-up issuers that filled the bound kept out those of the
    // delegators whose writecaps this node relies on. (Not any verified chain's: anyone
    // can make a tree of its own and present a chain of it.)
    let beyond_bound =
        held.get(&issuer).is_none() && held.len() >= keys::limits::MAX_REVOCATION_ISSUERS && {
            let own = read(&inner.chains);
            let roots: Vec<keys::Principal> = own
                .iter()
                .filter_map(|c| c.links().first().map(|l| l.issuer().principal()))
                .collect();
            !own.iter()
                .any(|c| c.links().iter().any(|l| l.issuer().principal() == issuer))
                && !read(&inner.verified).mentions_issuer(&issuer, &roots)
        };
    if beyond_bound {
        tracing::debug!(%issuer, "ignoring a revocation list: lists of too many issuers held, and none of its writecaps is known here");
        return Ok(dht::Verdict::Ignore);
    }
    let newer = held
        .get(&issuer)
        .is_none_or(|l| l.sequence() < list.sequence());
    drop(held);
    if !newer {
        return Ok(dht::Verdict::Ignore);
    }
    let now = std::time::Instant::now();
    if super::lock(&inner.revocation_arrivals)
        .get(&issuer)
        .is_some_and(|at| now.duration_since(*at) < super::REVOCATION_INTERVAL)
    {
        tracing::debug!(%issuer, "ignoring a revocation list: its issuer's last came moments ago");
        return Ok(dht::Verdict::Ignore);
    }
    match inner.take_revocations(&list) {
        Ok(()) => {
            // Only a list taken counts (a forged one must not hold back its issuer's).
            let mut arrivals = super::lock(&inner.revocation_arrivals);
            if arrivals.len() >= keys::limits::MAX_REVOCATION_ISSUERS * 2 {
                arrivals.retain(|_, at| now.duration_since(*at) < super::REVOCATION_INTERVAL);
            }
            arrivals.insert(issuer, now);
            Ok(dht::Verdict::Accept)
        }
        Err(keys::RevocationError::Stale { .. }) => Ok(dht::Verdict::Ignore),
        Err(e) => {
            tracing::info!(source = %message.source, error = %e, "rejected a revocation list");
            Err(Blame::Relay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow subscriber holds at most [`SUBSCRIPTION_BYTES`] of payloads (or one
    /// publication, however large): what comes beyond is dropped (pub-sub is best
    /// effort), and room comes back as it reads.
    #[tokio::test]
    async fn a_subscription_holds_payloads_up_to_its_bytes() {
        let topics = Topics::default();
        let (sender, receiver) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        topics.lock().insert(
            "t".to_string(),
            Topic {
                sessions: Arc::new(Sessions::new("t".into(), HashMap::new(), true, 16)),
                protocol: String::new(),
                subscribers: vec![Subscriber {
                    sender,
                    queued: queued.clone(),
                }],
            },
        );
        let mut subscription = Subscription {
            topic: "t".into(),
            receiver,
            queued,
            inner: Weak::new(),
        };
        let root = keys::SigningKey::generate();
        let tree = Path::root_of(root.principal());
        let publication = |bytes: usize| Publication {
            from: tree.clone(),
            chain: keys::Chain::root_grant(
                &root,
                root.principal(),
                tree.clone(),
                keys::Validity::for_seconds(60),
            ),
            protocol: String::new(),
            role: String::new(),
            session: 1,
            label: "l".into(),
            payload: vec![7; bytes],
        };
        let from = Arc::new(tree.clone());
        let node = libp2p::PeerId::random();
        let quarter = publication(SUBSCRIPTION_BYTES / 4);
        for _ in 0..4 {
            assert_eq!(topics.deliver("t", &from, &node, &quarter), Ok(1));
        }
        assert_eq!(topics.deliver("t", &from, &node, &quarter), Ok(0));
        assert_eq!(topics.dropped.load(Ordering::Relaxed), 1);
        for _ in 0..4 {
            assert_eq!(
                subscription.recv().await.unwrap().payload.len(),
                SUBSCRIPTION_BYTES / 4
            );
        }
        // Empty again: even one larger than the whole budget is taken, alone.
        let huge = publication(SUBSCRIPTION_BYTES + 1);
        assert_eq!(topics.deliver("t", &from, &node, &huge), Ok(1));
        assert_eq!(topics.deliver("t", &from, &node, &quarter), Ok(0));
        assert_eq!(
            subscription.recv().await.unwrap().payload.len(),
            SUBSCRIPTION_BYTES + 1
        );
        assert_eq!(topics.deliver("t", &from, &node, &quarter), Ok(1));
    }
}
