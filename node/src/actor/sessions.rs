//! The sessions one actor has open, each followed by a monitor of the actor's role, and
//! a bounded memory of ended ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use keys::Path;
use protocols::actor::Refusal;
use protocols::session::{Direction, Monitor, Protocol, Violation};

/// Ended sessions remembered per actor, so that a message after the end is refused as
/// such instead of starting a new session.
const ENDED_REMEMBERED: usize = 4096;

/// (the peer's key from [`Sessions::peer`], session id).
type Key = (u64, u64);

/// A protocol an actor speaks, with its role and the other side's.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub(crate) protocol: Arc<Protocol>,
    pub(crate) role: String,
    pub(crate) peer_role: String,
}

#[derive(Default)]
struct State {
    open: HashMap<Key, Monitor>,
    ended: HashSet<Key>,
    ended_order: VecDeque<Key>,
}

/// The session table of one actor (or one topic).
pub(crate) struct Sessions {
    owner: String,
    /// Keys peers: computed once per channel or session, not per message.
    hasher: std::hash::RandomState,
    served: HashMap<String, Served>,
    untyped: bool,
    max_open: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub(crate) fn new(
        owner: String,
        served: HashMap<String, Served>,
        untyped: bool,
        max_open: usize,
    ) -> Self {
        Sessions {
            owner,
            hasher: std::hash::RandomState::new(),
            served,
            untyped,
            max_open,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The protocols spoken, by name.
    pub(crate) fn protocols(&self) -> Vec<String> {
        let mut names: Vec<String> = self.served.keys().cloned().collect();
        if self.untyped {
            names.push(String::new());
        }
        names.sort();
        names
    }

    /// The key of a peer (`from`, speaking `protocol`) in this table: a keyed hash, so
    /// a remote cannot make two peers collide. Compute it once per channel or session.
    pub(crate) fn peer(&self, from: &Path, protocol: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((from, protocol))
    }

    /// The role the actor plays in `protocol` (empty when untyped or unknown).
    pub(crate) fn role(&self, protocol: &str) -> Arc<str> {
        self.served
            .get(protocol)
            .map_or_else(|| Arc::from(""), |s| Arc::from(s.role.as_str()))
    }

    /// Checks a message received from `from`, playing `role`, in `session` of
    /// `protocol`.
    pub(crate) fn check_receive(
        &self,
        peer: u64,
        protocol: &str,
        session: u64,
        role: &str,
        label: &str,
    ) -> Result<(), Refusal> {
        if protocol.is_empty() && self.untyped {
            return Ok(());
        }
        let Some(served) = self.served.get(protocol) else {
            return Err(Refusal::UnknownProtocol {
                actor: self.owner.clone(),
                protocol: protocol.to_string(),
            });
        };
        // Two parties: the sender must play the other role.
        if role != served.peer_role {
            return Err(Refusal::Violation(Violation::WrongRole {
                protocol: served.protocol.name().into(),
                role: served.role.clone(),
                label: label.into(),
                got: role.into(),
                expected: vec![served.peer_role.clone()],
            }));
        }
        let key = (peer, session);
        let mut state = self.lock();
        self.step(&mut state, served, key, Direction::Receive, label)
            .map_err(|e| match e {
                Step::Violation(v) => Refusal::Violation(v),
                Step::Full => Refusal::TooManySessions {
                    actor: self.owner.clone(),
                },
            })
    }

    /// Checks a message the actor sends to `to` in `session` of `protocol` (a reply).
    pub(crate) fn check_send(
        &self,
        peer: u64,
        protocol: &str,
        session: u64,
        label: &str,
    ) -> Result<(), Violation> {
        let Some(served) = self.served.get(protocol) else {
            return Ok(()); // untyped
        };
        let key = (peer, session);
        let mut state = self.lock();
        match self.step(&mut state, served, key, Direction::Send, label) {
            Ok(()) => Ok(()),
            Err(Step::Violation(v)) => Err(v),
            // A reply belongs to a session the ask opened; a full table cannot arise.
            Err(Step::Full) => Ok(()),
        }
    }

    fn step(
        &self,
        state: &mut State,
        served: &Served,
        key: Key,
        direction: Direction,
        label: &str,
    ) -> Result<(), Step> {
        if state.ended.contains(&key) {
            return Err(Step::Violation(Violation::AfterEnd {
                protocol: served.protocol.name().into(),
                role: served.role.clone(),
                got: format!("{}:{label}", served.peer_role),
            }));
        }
        if !state.open.contains_key(&key) {
            if state.open.len() >= self.max_open {
                return Err(Step::Full);
            }
            let monitor = served
                .protocol
                .monitor(&served.role)
                .map_err(|_| Step::Full)?;
            state.open.insert(key, monitor);
        }
        let Some(monitor) = state.open.get_mut(&key) else {
            return Err(Step::Full);
        };
        let result = match direction {
            Direction::Receive => monitor.receive(&served.peer_role, label),
            Direction::Send => monitor.send(&served.peer_role, label),
        };
        // Over when it may end and nothing may follow.
        if result.is_ok() && monitor.is_done() && monitor.expected().next().is_none() {
            state.open.remove(&key);
            if state.ended_order.len() >= ENDED_REMEMBERED
                && let Some(old) = state.ended_order.pop_front()
            {
                state.ended.remove(&old);
            }
            state.ended.insert(key);
            state.ended_order.push_back(key);
        }
        result.map_err(Step::Violation)
    }
}

enum Step {
    Violation(Violation),
    Full,
}
