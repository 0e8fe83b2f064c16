//! The sessions one actor has open, each followed by a monitor of the actor's role, and
//! a bounded memory of ended ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use keys::Path;

use super::Label;
use protocols::actor::Refusal;
use protocols::session::{Direction, Monitor, Protocol, Violation};

/// Ended sessions remembered per actor, so that a message after the end is refused as
/// such instead of starting a new session.
const ENDED_REMEMBERED: usize = 4096;

/// Sessions a full table forgot remembered per actor, so that their next message is
/// refused as the table's fullness, not held against its sender as out of protocol.
const FORGOTTEN_REMEMBERED: usize = 32_768;

/// (the peer's key from [`Sessions::peer`], session id).
type Key = (u64, u64);

/// A sender as one actor's session table knows it: its path and protocol, and its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Keys the sender's sessions.
    pub(crate) key: u64,
    /// Keys the sending node, whose share of the table is bounded.
    pub(crate) node: u64,
    /// Where the table found the sender's protocol among those the actor speaks, if
    /// it speaks it and the sender plays the other role in it: found once, not per
    /// message. `None` leaves it to each check (which then refuses, or finds it).
    pub(crate) served: Option<usize>,
}

/// A protocol an actor speaks, with its role and the other side's.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub(crate) protocol: Arc<Protocol>,
    pub(crate) role: String,
    pub(crate) peer_role: String,
}

/// Hashes the table's keys: a per-table random seed (a remote chooses session ids, and
/// one node's share of the table is bounded), and much cheaper than SipHash on the path
/// of every message.
type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
struct State {
    /// Each open session's monitor, the tick of its last message and its node.
    open: HashMap<Key, (Monitor, u64, u64), Hasher>,
    /// Counts steps (a run of one message in a loop is one step: see [`Receiving`]); a
    /// full table forgets the sessions idle the longest.
    tick: u64,
    /// Open sessions per sending node.
    per_node: HashMap<u64, usize, Hasher>,
    ended: HashSet<Key, Hasher>,
    ended_order: VecDeque<Key>,
    /// Sessions forgotten while open (see [`FORGOTTEN_REMEMBERED`]).
    forgotten: HashSet<Key, Hasher>,
    forgotten_order: VecDeque<Key>,
}

/// The session table of one actor (or one topic).
pub(crate) struct Sessions {
    owner: String,
    /// Keys peers: computed once per channel or session, not per message.
    hasher: std::hash::RandomState,
    /// By protocol name; actors speak a few, so a scan beats hashing the name.
    served: Vec<(String, Served)>,
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
            served: served.into_iter().collect(),
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

    fn served(&self, protocol: &str) -> Option<&Served> {
        self.served
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, served)| served)
    }

    /// What the actor serves of `protocol` to a sender playing `role`; the refusal if
    /// it does not speak it, or `role` is not the other side's.
    fn resolve(&self, protocol: &str, role: &str, label: &str) -> Result<&Served, Refusal> {
        let Some(served) = self.served(protocol) else {
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
        Ok(served)
    }

    /// The protocols spoken, by name.
    pub(crate) fn protocols(&self) -> Vec<String> {
        let mut names: Vec<String> = self.served.iter().map(|(name, _)| name.clone()).collect();
        if self.untyped {
            names.push(String::new());
        }
        names.sort();
        names
    }

    /// The key of a sender (`from`, speaking `protocol` as `role`, on `node`) in this
    /// table: keyed hashes, so a remote cannot make two senders collide. Compute it once
    /// per channel or session, and check its messages against this table only.
    pub(crate) fn peer(
        &self,
        from: &Path,
        protocol: &str,
        role: &str,
        node: &libp2p::PeerId,
    ) -> Peer {
        use std::hash::BuildHasher;
        Peer {
            key: self.hasher.hash_one((from, protocol)),
            node: self.hasher.hash_one(node),
            served: self
                .served
                .iter()
                .position(|(name, served)| name == protocol && served.peer_role == role),
        }
    }

    /// Whether `session` with `peer` is open or recently ended here.
    #[cfg(test)]
    pub(crate) fn knows(&self, peer: Peer, session: u64) -> bool {
        let state = self.lock();
        let key = (peer.key, session);
        state.open.contains_key(&key) || state.ended.contains(&key)
    }

    /// The role the actor plays in `protocol` (empty when untyped or unknown).
    pub(crate) fn role(&self, protocol: &str) -> Arc<str> {
        self.served(protocol)
            .map_or_else(|| Arc::from(""), |s| Arc::from(s.role.as_str()))
    }

    /// Checks a message received from `from`, playing `role`, in `session` of
    /// `protocol`.
    pub(crate) fn check_receive(
        &self,
        peer: Peer,
        protocol: &str,
        session: u64,
        role: &str,
        label: &str,
    ) -> Result<(), Refusal> {
        self.receiving()
            .step(peer, protocol, session, role, label)
            .map(|_| ())
    }

    /// The table locked for checking received messages: one lock for a batch of them.
    pub(crate) fn receiving(&self) -> Receiving<'_> {
        Receiving {
            sessions: self,
            state: None,
            looped: None,
        }
    }

    /// Checks a message the actor sends to `to` in `session` of `protocol` (a reply).
    pub(crate) fn check_send(
        &self,
        peer: Peer,
        protocol: &str,
        session: u64,
        label: &str,
    ) -> Result<(), Violation> {
        let Some(served) = self.served(protocol) else {
            return Ok(()); // untyped
        };
        let mut state = self.lock();
        match self.step(&mut state, served, peer, session, Direction::Send, label) {
            Ok(_) => Ok(()),
            Err(Step::Violation(v)) => Err(v),
            // A reply belongs to a session the ask opened; a full table cannot arise.
            Err(Step::Full) => Ok(()),
        }
    }

    fn step(
        &self,
        state: &mut State,
        served: &Served,
        peer: Peer,
        session: u64,
        direction: Direction,
        label: &str,
    ) -> Result<Taken, Step> {
        let key = (peer.key, session);
        state.tick += 1;
        let tick = state.tick;
        let take = |monitor: &mut Monitor| {
            let before = monitor.state();
            let result = match direction {
                Direction::Receive => monitor.receive(&served.peer_role, label),
                Direction::Send => monitor.send(&served.peer_role, label),
            };
            // Over when it may end and nothing may follow.
            let over = result.is_ok() && monitor.is_done() && monitor.expected().next().is_none();
            let taken = if monitor.state() == before {
                Taken::Looped
            } else {
                Taken::Moved
            };
            (result.map(|()| taken), over)
        };
        // The common case, an open session: one lookup.
        if let Some((monitor, last, _)) = state.open.get_mut(&key) {
            *last = tick;
            let (result, over) = take(monitor);
            if over {
                state.open.remove(&key);
                forget(&mut state.per_node, peer.node);
                Self::remember_end(state, key);
                // Ended: the same message again is refused, not taken as a loop.
                return result.map(|_| Taken::Moved).map_err(Step::Violation);
            }
            return result.map_err(Step::Violation);
        }
        if state.ended.contains(&key) {
            return Err(Step::Violation(Violation::AfterEnd {
                protocol: served.protocol.name().into(),
                role: served.role.clone(),
                got: format!("{}:{label}", served.peer_role),
            }));
        }
        // A new session. One node may hold a share of the table, so that it cannot push
        // out everyone else's sessions (however many paths it sends from).
        let held = state.per_node.get(&peer.node).copied().unwrap_or(0);
        if held >= (self.max_open / PEER_SHARE).max(1) {
            return Err(Step::Full);
        }
        let mut monitor = served
            .protocol
            .monitor(&served.role)
            .map_err(|_| Step::Full)?;
        let (result, over) = take(&mut monitor);
        // A refused first message opens no session. One of a session a full table forgot
        // (others' sessions pushed it out while it was idle) is refused for that, and not
        // held against its sender.
        let taken = match result {
            Ok(taken) => {
                state.forgotten.remove(&key);
                taken
            }
            Err(_) if direction == Direction::Receive && state.forgotten.contains(&key) => {
                return Err(Step::Full);
            }
            Err(violation) => return Err(Step::Violation(violation)),
        };
        if over {
            Self::remember_end(state, key);
            return Ok(Taken::Moved);
        }
        if state.open.len() >= self.max_open {
            // Forget sessions idle for the last half-table's worth of messages (peers that
            // never said goodbye); at most half the table was touched since.
            let horizon = tick.saturating_sub(self.max_open as u64 / 2);
            let State {
                open,
                per_node,
                forgotten,
                forgotten_order,
                ..
            } = &mut *state;
            open.retain(|key, (_, last, node)| {
                let keep = *last > horizon;
                if !keep {
                    forget(per_node, *node);
                    if forgotten_order.len() >= FORGOTTEN_REMEMBERED
                        && let Some(old) = forgotten_order.pop_front()
                    {
                        forgotten.remove(&old);
                    }
                    if forgotten.insert(*key) {
                        forgotten_order.push_back(*key);
                    }
                }
                keep
            });
        }
        *state.per_node.entry(peer.node).or_default() += 1;
        state.open.insert(key, (monitor, tick, peer.node));
        Ok(taken)
    }

    fn remember_end(state: &mut State, key: Key) {
        if state.ended_order.len() >= ENDED_REMEMBERED
            && let Some(old) = state.ended_order.pop_front()
        {
            state.ended.remove(&old);
        }
        state.ended.insert(key);
        state.ended_order.push_back(key);
    }
}

/// What a step did to its session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Left it as it was (a message a loop repeats): the same message again, in the same
    /// session, is taken the same way.
    Looped,
    /// Moved it (or opened or ended the session).
    Moved,
}

/// [`Sessions::check_receive`] for many messages, locking the table once (at the first
/// typed one).
pub(crate) struct Receiving<'a> {
    sessions: &'a Sessions,
    state: Option<std::sync::MutexGuard<'a, State>>,
    /// The last message checked, if its step left its session's state as it was:
    /// (sender, session, the protocol's place among those served, label). Machines are
    /// deterministic and the table is locked meanwhile, so the same message next in the
    /// same session is taken the same way, without a lookup (a run of tells in a loop
    /// costs one step, not one per message).
    looped: Option<(u64, u64, usize, Label)>,
}

impl Receiving<'_> {
    /// Checks a message received from `from`, playing `role`, in `session` of
    /// `protocol`.
    pub(crate) fn check(
        &mut self,
        peer: Peer,
        protocol: &str,
        session: u64,
        role: &str,
        label: &Label,
    ) -> Result<(), Refusal> {
        if let (Some((key, last_session, served, last_label)), Some(place)) =
            (&self.looped, peer.served)
            && *key == peer.key
            && *last_session == session
            && *served == place
            && last_label == label
        {
            return Ok(());
        }
        self.looped = None;
        let taken = self.step(peer, protocol, session, role, label)?;
        if let (Taken::Looped, Some(place)) = (taken, peer.served) {
            self.looped = Some((peer.key, session, place, label.clone()));
        }
        Ok(())
    }

    fn step(
        &mut self,
        peer: Peer,
        protocol: &str,
        session: u64,
        role: &str,
        label: &str,
    ) -> Result<Taken, Refusal> {
        let sessions = self.sessions;
        if protocol.is_empty() && sessions.untyped {
            return Ok(Taken::Moved);
        }
        let served = match peer.served.and_then(|i| sessions.served.get(i)) {
            // Found when the sender's channel or session was: `name == protocol` and
            // the role was the other one (by this table: a `Peer` is checked only
            // against the table that made it).
            Some((name, served)) => {
                debug_assert!(
                    name.as_str() == protocol && served.peer_role == role,
                    "a sender placed for another protocol or role"
                );
                served
            }
            None => sessions.resolve(protocol, role, label)?,
        };
        let state = self.state.get_or_insert_with(|| sessions.lock());
        sessions
            .step(state, served, peer, session, Direction::Receive, label)
            .map_err(|e| match e {
                Step::Violation(v) => Refusal::Violation(v),
                Step::Full => Refusal::TooManySessions {
                    actor: sessions.owner.clone(),
                },
            })
    }
}

enum Step {
    Violation(Violation),
    Full,
}

/// One node holds at most this fraction of the table (1/16).
const PEER_SHARE: usize = 16;

fn forget(per_node: &mut HashMap<u64, usize, Hasher>, node: u64) {
    if let Some(n) = per_node.get_mut(&node) {
        *n -= 1;
        if *n == 0 {
            per_node.remove(&node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::session::Global;

    /// client → server: any number of `ping`s, then `bye`.
    /// `name`: client → server, any number of `ping`s, then `bye`; the actor plays
    /// `role`.
    fn served(name: &str, role: &str) -> (String, Served) {
        let protocol = Protocol::new(
            name,
            ["client", "server"],
            Global::repeat(
                "l",
                Global::choice(
                    "client",
                    [
                        Global::send("client", "server", "ping", Global::again("l")),
                        Global::send("client", "server", "bye", Global::End),
                    ],
                ),
            ),
        )
        .unwrap();
        let peer_role = if role == "server" { "client" } else { "server" };
        let served = Served {
            protocol: Arc::new(protocol),
            role: role.into(),
            peer_role: peer_role.into(),
        };
        (name.into(), served)
    }

    fn sessions(max_open: usize) -> Sessions {
        Sessions::new(
            "a".into(),
            HashMap::from([served("p/1", "server")]),
            false,
            max_open,
        )
    }

    fn peer(key: u64, node: u64) -> Peer {
        Peer {
            key,
            node,
            served: None,
        }
    }

    #[test]
    fn one_node_cannot_fill_the_table_and_idle_sessions_make_room() {
        let table = sessions(64);
        // A node may open 64 / 16 = 4 sessions, from however many paths.
        for session in 0..4 {
            table
                .check_receive(peer(session, 1), "p/1", session, "client", "ping")
                .unwrap();
        }
        assert!(matches!(
            table.check_receive(peer(9, 1), "p/1", 4, "client", "ping"),
            Err(Refusal::TooManySessions { .. })
        ));
        // Ending one frees its place.
        table
            .check_receive(peer(0, 1), "p/1", 0, "client", "bye")
            .unwrap();
        table
            .check_receive(peer(9, 1), "p/1", 4, "client", "ping")
            .unwrap();
        // Many nodes fill the table; the ones idle longest are forgotten for new ones.
        for n in 2..100 {
            table
                .check_receive(peer(100 + n, n), "p/1", 0, "client", "ping")
                .unwrap();
        }
        assert!(table.lock().open.len() <= 64);
        assert!(
            !table.knows(peer(102, 2), 0),
            "the longest idle was forgotten"
        );
        assert!(table.knows(peer(199, 99), 0));
    }

    /// A session that a full table forgot while it was idle (others' sessions pushed it
    /// out) has its next message refused as the table's fullness, which is not held
    /// against its sender, not as out of protocol; one never opened still is.
    #[test]
    fn a_forgotten_session_is_refused_for_the_full_table_not_as_a_violation() {
        let protocol = Protocol::new(
            "h/1",
            ["client", "server"],
            Global::send(
                "client",
                "server",
                "hi",
                Global::repeat(
                    "l",
                    Global::send("client", "server", "ping", Global::again("l")),
                ),
            ),
        )
        .unwrap();
        let table = Sessions::new(
            "a".into(),
            HashMap::from([(
                "h/1".to_string(),
                Served {
                    protocol: Arc::new(protocol),
                    role: "server".into(),
                    peer_role: "client".into(),
                },
            )]),
            false,
            64,
        );
        table
            .check_receive(peer(1, 1), "h/1", 7, "client", "hi")
            .unwrap();
        for n in 2..200 {
            table
                .check_receive(peer(100 + n, n), "h/1", 0, "client", "hi")
                .unwrap();
        }
        assert!(!table.knows(peer(1, 1), 7), "pushed out");
        assert!(matches!(
            table.check_receive(peer(1, 1), "h/1", 7, "client", "ping"),
            Err(Refusal::TooManySessions { .. })
        ));
        assert!(matches!(
            table.check_receive(peer(1, 1), "h/1", 8, "client", "ping"),
            Err(Refusal::Violation(_))
        ));
        // Begun again, it is a session like any other.
        table
            .check_receive(peer(1, 1), "h/1", 7, "client", "hi")
            .unwrap();
        table
            .check_receive(peer(1, 1), "h/1", 7, "client", "ping")
            .unwrap();
    }

    #[test]
    fn senders_are_placed_in_the_protocol_they_speak_among_several() {
        // The actor serves p/1, q/1 and r/1 (in r/1 it is the client: the other side
        // plays server).
        let table = Sessions::new(
            "a".into(),
            HashMap::from([
                served("p/1", "server"),
                served("q/1", "server"),
                served("r/1", "client"),
            ]),
            false,
            64,
        );
        let node = libp2p::PeerId::random();
        let from = Path::root_of(keys::Principal::from_bytes([1; 32]));
        for (protocol, role) in [("p/1", "client"), ("q/1", "client"), ("r/1", "server")] {
            let peer = table.peer(&from, protocol, role, &node);
            let (name, served) = &table.served[peer.served.expect("placed")];
            assert_eq!((name.as_str(), served.peer_role.as_str()), (protocol, role));
        }
        // In r/1 the sender must be the server; in p/1 the client.
        assert_eq!(table.peer(&from, "r/1", "client", &node).served, None);
        assert_eq!(table.peer(&from, "p/1", "server", &node).served, None);
    }

    #[test]
    fn a_run_of_one_looping_message_is_one_step_and_what_ends_it_is_checked() {
        let table = sessions(64);
        let node = libp2p::PeerId::random();
        let from = Path::root_of(keys::Principal::from_bytes([1; 32]));
        let client = table.peer(&from, "p/1", "client", &node);
        let (ping, bye) = (Label::new("ping"), Label::new("bye"));
        let mut receiving = table.receiving();
        for _ in 0..5 {
            receiving.check(client, "p/1", 1, "client", &ping).unwrap();
        }
        // Another session's pings are its own steps; then session 1 ends.
        receiving.check(client, "p/1", 2, "client", &ping).unwrap();
        receiving.check(client, "p/1", 1, "client", &ping).unwrap();
        receiving.check(client, "p/1", 1, "client", &bye).unwrap();
        // After the end, the message that looped before is refused, not repeated.
        assert!(matches!(
            receiving.check(client, "p/1", 1, "client", &ping),
            Err(Refusal::Violation(Violation::AfterEnd { .. }))
        ));
        assert!(matches!(
            receiving.check(client, "p/1", 1, "client", &ping),
            Err(Refusal::Violation(Violation::AfterEnd { .. }))
        ));
        // A label the state has no step for breaks a run too.
        receiving.check(client, "p/1", 2, "client", &ping).unwrap();
        assert!(matches!(
            receiving.check(client, "p/1", 2, "client", &Label::new("pong")),
            Err(Refusal::Violation(Violation::Unexpected { .. }))
        ));
        drop(receiving);
        // Steps: session 1's first ping, session 2's, session 1's again, its bye, the
        // two refused pings, session 2's ping and the refused pong.
        assert_eq!(table.lock().tick, 8);
        assert!(table.knows(client, 2));
    }

    /// An actor serving `p/1` (any number of pings, then bye: ping loops) and `q/1` (a,
    /// b, then ping to go round again or bye: nothing loops on itself), as server.
    fn two_protocols(max_open: usize) -> Sessions {
        let q = Protocol::new(
            "q/1",
            ["client", "server"],
            Global::repeat(
                "l",
                Global::send(
                    "client",
                    "server",
                    "a",
                    Global::send(
                        "client",
                        "server",
                        "b",
                        Global::choice(
                            "client",
                            [
                                Global::send("client", "server", "ping", Global::again("l")),
                                Global::send("client", "server", "bye", Global::End),
                            ],
                        ),
                    ),
                ),
            ),
        )
        .unwrap();
        let q = Served {
            protocol: Arc::new(q),
            role: "server".into(),
            peer_role: "client".into(),
        };
        Sessions::new(
            "a".into(),
            HashMap::from([served("p/1", "server"), ("q/1".into(), q)]),
            false,
            max_open,
        )
    }

    /// One received message: (q/1 rather than p/1, node, sender, session, label).
    type Message = (bool, u64, u64, u64, usize);

    proptest::proptest! {
        /// Batches checked under one lock (runs of a looping message taken in one step)
        /// get exactly the answers that checking every message alone gets, with a table
        /// of 16 (one session per node) that fills and forgets the longest idle.
        #[test]
        fn batches_are_checked_as_every_message_alone(
            batches in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::bool::ANY, 0..24u64, 0..2u64, 0..12u64, 0..5usize),
                    1..30,
                ),
                1..20,
            )
        ) {
            const LABELS: [&str; 5] = ["ping", "bye", "a", "b", "pong"];
            let (batched, alone) = (two_protocols(16), two_protocols(16));
            let peer = |table: &Sessions, (q, node, from, _, _): Message| {
                let protocol = if q { "q/1" } else { "p/1" };
                Peer {
                    // Keyed per sender and protocol, as `Sessions::peer` keys them.
                    key: from * 2 + u64::from(q),
                    node,
                    served: table.served.iter().position(|(name, _)| name == protocol),
                }
            };
            for batch in batches {
                let mut receiving = batched.receiving();
                for message in batch {
                    let (q, _, _, session, label) = message;
                    let protocol = if q { "q/1" } else { "p/1" };
                    let label = Label::new(LABELS[label]);
                    let got = receiving.check(peer(&batched, message), protocol, session, "client", &label);
                    let want = alone.check_receive(peer(&alone, message), protocol, session, "client", &label);
                    proptest::prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
                }
            }
        }
    }

    #[test]
    fn a_sender_is_placed_once_and_checked_the_same() {
        let table = sessions(64);
        let node = libp2p::PeerId::random();
        let from = Path::root_of(keys::Principal::from_bytes([1; 32]));
        let client = table.peer(&from, "p/1", "client", &node);
        assert_eq!(client.served, Some(0));
        table
            .check_receive(client, "p/1", 1, "client", "ping")
            .unwrap();
        // Playing the actor's own role, or speaking what it does not: not placed, and
        // refused as before.
        let server = table.peer(&from, "p/1", "server", &node);
        assert_eq!(server.served, None);
        assert!(matches!(
            table.check_receive(server, "p/1", 2, "server", "ping"),
            Err(Refusal::Violation(Violation::WrongRole { .. }))
        ));
        let other = table.peer(&from, "nope/1", "client", &node);
        assert_eq!(other.served, None);
        assert!(matches!(
            table.check_receive(other, "nope/1", 3, "client", "ping"),
            Err(Refusal::UnknownProtocol { .. })
        ));
    }

    #[test]
    fn a_refused_first_message_opens_nothing_and_the_end_is_remembered() {
        let table = sessions(64);
        assert!(matches!(
            table.check_receive(peer(1, 1), "p/1", 7, "server", "ping"),
            Err(Refusal::Violation(Violation::WrongRole { .. }))
        ));
        assert!(!table.knows(peer(1, 1), 7));
        table
            .check_receive(peer(1, 1), "p/1", 7, "client", "bye")
            .unwrap();
        assert!(matches!(
            table.check_receive(peer(1, 1), "p/1", 7, "client", "ping"),
            Err(Refusal::Violation(Violation::AfterEnd { .. }))
        ));
        assert!(matches!(
            table.check_receive(peer(1, 1), "nope/1", 8, "client", "ping"),
            Err(Refusal::UnknownProtocol { .. })
        ));
    }
}
