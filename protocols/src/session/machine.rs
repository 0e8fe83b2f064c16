//! From a global protocol to one deterministic state machine per role.
//!
//! The global protocol compiles to an automaton whose edges are messages
//! (from, to, label) or silent steps (choices, loop entries). A role's machine is that
//! automaton with every message the role neither sends nor receives made silent, then
//! determinised (subset construction). Branches that a role cannot observe thereby merge,
//! as in multiparty session types' projection with merging.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{DefinitionError, Global};

#[derive(Debug, Clone)]
struct Action {
    from: String,
    to: String,
    label: String,
}

/// The compiled global protocol.
#[derive(Debug)]
pub(super) struct Automaton {
    /// Per state: message edges.
    edges: Vec<Vec<(Action, usize)>>,
    /// Per state: silent edges.
    silent: Vec<Vec<usize>>,
    finals: BTreeSet<usize>,
    start: usize,
}

impl Automaton {
    pub(super) fn build(global: &Global, roles: &[String]) -> Result<Automaton, DefinitionError> {
        let mut a = Automaton {
            edges: Vec::new(),
            silent: Vec::new(),
            finals: BTreeSet::new(),
            start: 0,
        };
        let mut loops = Vec::new();
        let mut repeats = Vec::new();
        a.start = a.compile(global, roles, &mut loops, &mut repeats)?;
        for (state, name) in repeats {
            // A loop that can come back to its start silently never sends anything.
            let mut next = BTreeSet::new();
            for &s in &a.silent[state] {
                next.extend(a.closure([s]));
            }
            if next.contains(&state) {
                return Err(DefinitionError::EmptyLoop(name));
            }
        }
        Ok(a)
    }

    fn state(&mut self) -> usize {
        self.edges.push(Vec::new());
        self.silent.push(Vec::new());
        self.edges.len() - 1
    }

    fn compile(
        &mut self,
        global: &Global,
        roles: &[String],
        loops: &mut Vec<(String, usize)>,
        repeats: &mut Vec<(usize, String)>,
    ) -> Result<usize, DefinitionError> {
        match global {
            Global::End => {
                let s = self.state();
                self.finals.insert(s);
                Ok(s)
            }
            Global::Send {
                from,
                to,
                label,
                then,
            } => {
                for role in [from, to] {
                    if !roles.contains(role) {
                        return Err(DefinitionError::UnknownRole(role.clone()));
                    }
                }
                if from == to {
                    return Err(DefinitionError::SelfSend(from.clone()));
                }
                let s = self.state();
                let t = self.compile(then, roles, loops, repeats)?;
                self.edges[s].push((
                    Action {
                        from: from.clone(),
                        to: to.clone(),
                        label: label.clone(),
                    },
                    t,
                ));
                Ok(s)
            }
            Global::Choice { by, branches } => {
                if !roles.contains(by) {
                    return Err(DefinitionError::UnknownRole(by.clone()));
                }
                if branches.is_empty() {
                    return Err(DefinitionError::EmptyChoice(by.clone()));
                }
                let mut labels = BTreeSet::new();
                for branch in branches {
                    let firsts = firsts(branch);
                    if firsts.is_empty() || firsts.iter().any(|(from, _)| from != by) {
                        return Err(DefinitionError::BranchNotByChooser { by: by.clone() });
                    }
                    for (_, label) in firsts {
                        if !labels.insert(label.clone()) {
                            return Err(DefinitionError::AmbiguousChoice {
                                by: by.clone(),
                                label,
                            });
                        }
                    }
                }
                let s = self.state();
                for branch in branches {
                    let e = self.compile(branch, roles, loops, repeats)?;
                    self.silent[s].push(e);
                }
                Ok(s)
            }
            Global::Repeat { name, body } => {
                let s = self.state();
                loops.push((name.clone(), s));
                repeats.push((s, name.clone()));
                let e = self.compile(body, roles, loops, repeats);
                loops.pop();
                let e = e?;
                self.silent[s].push(e);
                Ok(s)
            }
            Global::Again(name) => loops
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|&(_, s)| s)
                .ok_or_else(|| DefinitionError::UnboundLoop(name.clone())),
        }
    }

    /// States reachable from `states` by silent edges.
    fn closure(&self, states: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = states.into_iter().collect();
        while let Some(s) = stack.pop() {
            if seen.insert(s) {
                stack.extend(self.silent[s].iter().copied());
            }
        }
        seen
    }

    /// The deterministic machine of `role`.
    pub(super) fn project(&self, role: &str) -> Result<LocalMachine, DefinitionError> {
        // Closure that also crosses the messages `role` does not take part in.
        let closure = |states: BTreeSet<usize>| -> BTreeSet<usize> {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<usize> = states.into_iter().collect();
            while let Some(s) = stack.pop() {
                if seen.insert(s) {
                    stack.extend(self.silent[s].iter().copied());
                    for (action, t) in &self.edges[s] {
                        if action.from != role && action.to != role {
                            stack.push(*t);
                        }
                    }
                }
            }
            seen
        };
        let start = closure(BTreeSet::from([self.start]));
        let mut index: BTreeMap<BTreeSet<usize>, usize> = BTreeMap::from([(start.clone(), 0)]);
        let mut work = vec![start];
        let mut states: Vec<LocalState> = vec![LocalState::default()];
        while let Some(set) = work.pop() {
            let id = index[&set];
            let mut moves: BTreeMap<(Direction, String, String), BTreeSet<usize>> = BTreeMap::new();
            for &s in &set {
                for (action, t) in &self.edges[s] {
                    let key = if action.from == role {
                        (Direction::Send, action.to.clone(), action.label.clone())
                    } else if action.to == role {
                        (
                            Direction::Receive,
                            action.from.clone(),
                            action.label.clone(),
                        )
                    } else {
                        continue;
                    };
                    moves.entry(key).or_default().insert(*t);
                }
            }
            let mut transitions = Vec::new();
            for ((direction, peer, label), targets) in moves {
                let target = closure(targets);
                let next = match index.get(&target) {
                    Some(&n) => n,
                    None => {
                        let n = states.len();
                        states.push(LocalState::default());
                        index.insert(target.clone(), n);
                        work.push(target);
                        n
                    }
                };
                transitions.push(Transition {
                    direction,
                    peer,
                    label,
                    next,
                });
            }
            states[id] = LocalState {
                transitions,
                done: set.iter().any(|s| self.finals.contains(s)),
            };
        }
        Ok(LocalMachine {
            role: role.into(),
            states,
        })
    }
}

/// The first messages a protocol can start with: (sender, label).
fn firsts(global: &Global) -> Vec<(String, String)> {
    match global {
        Global::Send { from, label, .. } => vec![(from.clone(), label.clone())],
        Global::Choice { branches, .. } => branches.iter().flat_map(firsts).collect(),
        Global::Repeat { body, .. } => firsts(body),
        Global::Again(_) | Global::End => Vec::new(),
    }
}

/// Whether a role sends or receives a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// The role sends it.
    Send,
    /// The role receives it.
    Receive,
}

/// One step of a role's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Send or receive.
    pub direction: Direction,
    /// The other role.
    pub peer: String,
    /// The message label.
    pub label: String,
    /// The state after it.
    pub next: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LocalState {
    transitions: Vec<Transition>,
    done: bool,
}

/// One role's deterministic state machine; state 0 is the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMachine {
    role: String,
    states: Vec<LocalState>,
}

impl LocalMachine {
    /// The role.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// How many states.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether the machine has no states (never: state 0 always exists).
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The steps possible in `state`.
    pub fn transitions(&self, state: usize) -> &[Transition] {
        self.states.get(state).map_or(&[], |s| &s.transitions)
    }

    /// Whether the session may end in `state`.
    pub fn may_end(&self, state: usize) -> bool {
        self.states.get(state).is_some_and(|s| s.done)
    }
}

/// A message out of protocol, as reported to both sides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Violation {
    /// The label is not one the role may take in its current state.
    #[error("{protocol}: {role} cannot {direction} {got:?} now; expected one of {expected:?}")]
    Unexpected {
        /// The protocol.
        protocol: String,
        /// The role checking.
        role: String,
        /// Sent or received.
        direction: DirectionText,
        /// The offending `peer:label`.
        got: String,
        /// What would have been accepted, as `peer:label` (at most [`MAX_EXPECTED`]).
        #[serde(deserialize_with = "expected_list")]
        expected: Vec<String>,
    },
    /// The label is right but it comes from (or goes to) the wrong role.
    #[error("{protocol}: {role} expected {label:?} with {expected:?}, not with {got:?}")]
    WrongRole {
        /// The protocol.
        protocol: String,
        /// The role checking.
        role: String,
        /// The label.
        label: String,
        /// The role on the other end.
        got: String,
        /// The roles that may send or receive it now (at most [`MAX_EXPECTED`]).
        #[serde(deserialize_with = "expected_list")]
        expected: Vec<String>,
    },
    /// The session is over; nothing more may be sent or received.
    #[error("{protocol}: the session of {role} is over; {got:?} came after the end")]
    AfterEnd {
        /// The protocol.
        protocol: String,
        /// The role checking.
        role: String,
        /// The offending `peer:label`.
        got: String,
    },
}

/// Most alternatives a [`Violation`] names; a state with more names the first ones.
pub const MAX_EXPECTED: usize = 64;

/// A violation's list of alternatives, counted as it is decoded: a refusal naming
/// millions of empty ones held a hundred times its size in memory.
fn expected_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    crate::wire::bounded::seq(d, MAX_EXPECTED, "expected messages", |s: String| s)
}

/// "send" or "receive", for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionText(pub Direction);

impl fmt::Display for DirectionText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Direction::Send => "send",
            Direction::Receive => "receive",
        })
    }
}

/// Follows one session from one role's point of view. Check every message: received ones
/// with [`Monitor::receive`] before acting on them, outgoing ones with [`Monitor::send`]
/// before sending them. A refused message leaves the state unchanged.
#[derive(Debug, Clone)]
pub struct Monitor {
    protocol: String,
    role: String,
    machine: Arc<LocalMachine>,
    state: usize,
}

impl Monitor {
    pub(super) fn new(protocol: String, role: String, machine: Arc<LocalMachine>) -> Self {
        Monitor {
            protocol,
            role,
            machine,
            state: 0,
        }
    }

    /// Checks and takes a received message.
    pub fn receive(&mut self, from: &str, label: &str) -> Result<(), Violation> {
        self.step(Direction::Receive, from, label)
    }

    /// Checks and takes a message about to be sent.
    pub fn send(&mut self, to: &str, label: &str) -> Result<(), Violation> {
        self.step(Direction::Send, to, label)
    }

    /// Whether the session may end here.
    pub fn is_done(&self) -> bool {
        self.machine.may_end(self.state)
    }

    /// The current state.
    pub fn state(&self) -> usize {
        self.state
    }

    /// Goes back to `state`, one this monitor was in before: for undoing a step whose
    /// message was, after all, not sent or refused. A state the machine does not have is
    /// ignored.
    pub fn rewind(&mut self, state: usize) {
        if state < self.machine.len() {
            self.state = state;
        }
    }

    /// What may happen next, as (direction, peer, label).
    pub fn expected(&self) -> impl Iterator<Item = (Direction, &str, &str)> {
        self.machine
            .transitions(self.state)
            .iter()
            .map(|t| (t.direction, t.peer.as_str(), t.label.as_str()))
    }

    fn step(&mut self, direction: Direction, peer: &str, label: &str) -> Result<(), Violation> {
        let transitions = self.machine.transitions(self.state);
        if let Some(t) = transitions
            .iter()
            .find(|t| t.direction == direction && t.peer == peer && t.label == label)
        {
            self.state = t.next;
            return Ok(());
        }
        let got = format!("{peer}:{label}");
        if transitions.is_empty() {
            return Err(Violation::AfterEnd {
                protocol: self.protocol.clone(),
                role: self.role.clone(),
                got,
            });
        }
        let same_label: Vec<String> = transitions
            .iter()
            .filter(|t| t.direction == direction && t.label == label)
            .map(|t| t.peer.clone())
            .take(MAX_EXPECTED)
            .collect();
        if !same_label.is_empty() {
            return Err(Violation::WrongRole {
                protocol: self.protocol.clone(),
                role: self.role.clone(),
                label: label.into(),
                got: peer.into(),
                expected: same_label,
            });
        }
        Err(Violation::Unexpected {
            protocol: self.protocol.clone(),
            role: self.role.clone(),
            direction: DirectionText(direction),
            got,
            expected: transitions
                .iter()
                .filter(|t| t.direction == direction)
                .map(|t| format!("{}:{}", t.peer, t.label))
                .take(MAX_EXPECTED)
                .collect(),
        })
    }
}

/// A read-only view of the global automaton, for tests that walk it.
#[cfg(test)]
pub(super) struct WalkView(Automaton);

#[cfg(test)]
impl WalkView {
    pub(super) fn new(global: &Global, roles: &[String]) -> Self {
        WalkView(Automaton::build(global, roles).expect("well formed"))
    }

    pub(super) fn start(&self) -> usize {
        self.0.start
    }

    pub(super) fn closure(&self, s: usize) -> Vec<usize> {
        self.0.closure([s]).into_iter().collect()
    }

    pub(super) fn edges(&self, s: usize) -> Vec<(String, String, String, usize)> {
        self.0.edges[s]
            .iter()
            .map(|(a, t)| (a.from.clone(), a.to.clone(), a.label.clone(), *t))
            .collect()
    }
}
