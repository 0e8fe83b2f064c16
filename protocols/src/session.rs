//! Session types: a protocol is declared once, as a *global* protocol (who sends what to
//! whom, in which order, with choices and loops), and projected to one state machine per
//! role. A [`Monitor`] follows one session from one role's point of view and checks every
//! message at the boundary, sent or received; anything out of protocol is a typed
//! [`Violation`].
//!
//! ```
//! use protocols::session::{Global, Protocol};
//!
//! // client → server: join; then any number of posts; then leave.
//! let chat = Protocol::new(
//!     "chat/1",
//!     ["client", "server"],
//!     Global::send("client", "server", "join", Global::repeat("session",
//!         Global::choice("client", [
//!             Global::send("client", "server", "post", Global::again("session")),
//!             Global::send("client", "server", "leave", Global::End),
//!         ]))),
//! ).unwrap();
//!
//! let mut server = chat.monitor("server").unwrap();
//! server.receive("client", "join").unwrap();
//! server.receive("client", "post").unwrap();
//! assert!(server.receive("client", "join").is_err()); // joining twice is out of protocol
//! server.receive("client", "leave").unwrap();
//! assert!(server.is_done());
//! ```

mod machine;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use machine::{Direction, LocalMachine, MAX_EXPECTED, Monitor, Transition, Violation};

/// A global protocol, as written by its designer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Global {
    /// `from` sends `label` to `to`, then the protocol continues with `then`.
    Send {
        /// Sending role.
        from: String,
        /// Receiving role.
        to: String,
        /// Message label.
        label: String,
        /// What follows.
        then: Box<Global>,
    },
    /// `by` chooses one branch; each branch starts with a message `by` sends, and the
    /// first labels of the branches differ.
    Choice {
        /// The choosing role.
        by: String,
        /// The branches.
        branches: Vec<Global>,
    },
    /// A loop named `name`; [`Global::Again`] inside it jumps back to its start.
    Repeat {
        /// The loop's name.
        name: String,
        /// Its body.
        body: Box<Global>,
    },
    /// Jump back to the start of the enclosing loop `name`.
    Again(String),
    /// The session is over.
    End,
}

impl Global {
    /// `from` sends `label` to `to`, then `then`.
    pub fn send(from: &str, to: &str, label: &str, then: Global) -> Global {
        Global::Send {
            from: from.into(),
            to: to.into(),
            label: label.into(),
            then: Box::new(then),
        }
    }

    /// `by` chooses between `branches`.
    pub fn choice(by: &str, branches: impl IntoIterator<Item = Global>) -> Global {
        Global::Choice {
            by: by.into(),
            branches: branches.into_iter().collect(),
        }
    }

    /// A loop named `name` around `body`.
    pub fn repeat(name: &str, body: Global) -> Global {
        Global::Repeat {
            name: name.into(),
            body: Box::new(body),
        }
    }

    /// Back to the start of loop `name`.
    pub fn again(name: &str) -> Global {
        Global::Again(name.into())
    }
}

/// Why a global protocol is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// A message names a role the protocol does not declare.
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    /// A role sends to itself.
    #[error("role {0:?} sends to itself")]
    SelfSend(String),
    /// A choice has no branches.
    #[error("a choice by {0:?} has no branches")]
    EmptyChoice(String),
    /// A branch of a choice does not start with a message from the chooser.
    #[error("every branch of a choice by {by:?} must start with a message {by:?} sends")]
    BranchNotByChooser {
        /// The chooser.
        by: String,
    },
    /// Two branches start with the same label, so receivers cannot tell them apart.
    #[error("two branches of a choice by {by:?} start with the same label {label:?}")]
    AmbiguousChoice {
        /// The chooser.
        by: String,
        /// The shared label.
        label: String,
    },
    /// `Again` names no enclosing loop.
    #[error("`again {0:?}` is outside a loop of that name")]
    UnboundLoop(String),
    /// A loop can go round without any message.
    #[error("loop {0:?} can repeat without sending anything")]
    EmptyLoop(String),
    /// Two roles have the same name.
    #[error("role {0:?} is declared twice")]
    DuplicateRole(String),
    /// A protocol, role or label name longer than the wire carries
    /// ([`crate::actor::MAX_NAME_BYTES`]).
    #[error("the name {0:?} is longer than {max} bytes", max = crate::actor::MAX_NAME_BYTES)]
    NameTooLong(String),
}

/// A checked protocol with its projections, one per role.
#[derive(Debug, Clone)]
pub struct Protocol {
    name: String,
    global: Global,
    roles: BTreeMap<String, Arc<LocalMachine>>,
}

/// Why a monitor could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol {protocol:?} has no role {role:?}")]
pub struct UnknownRole {
    /// The protocol.
    pub protocol: String,
    /// The role asked for.
    pub role: String,
}

impl Protocol {
    /// Checks `global` and projects it to every role.
    pub fn new<'a>(
        name: &str,
        roles: impl IntoIterator<Item = &'a str>,
        global: Global,
    ) -> Result<Protocol, DefinitionError> {
        let mut names: Vec<String> = Vec::new();
        for role in roles {
            if names.iter().any(|r| r == role) {
                return Err(DefinitionError::DuplicateRole(role.into()));
            }
            names.push(role.into());
        }
        let too_long = |n: &str| n.len() > crate::actor::MAX_NAME_BYTES;
        if let Some(long) = std::iter::once(name)
            .chain(names.iter().map(String::as_str))
            .find(|n| too_long(n))
        {
            return Err(DefinitionError::NameTooLong(long.into()));
        }
        let automaton = machine::Automaton::build(&global, &names)?;
        let mut projected = BTreeMap::new();
        for role in &names {
            let local = automaton.project(role)?;
            // Labels travel in messages and refusals, which hold them to the wire's limit.
            for state in 0..local.len() {
                if let Some(t) = local.transitions(state).iter().find(|t| too_long(&t.label)) {
                    return Err(DefinitionError::NameTooLong(t.label.clone()));
                }
            }
            projected.insert(role.clone(), Arc::new(local));
        }
        Ok(Protocol {
            name: name.into(),
            global,
            roles: projected,
        })
    }

    /// The protocol's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The global protocol.
    pub fn global(&self) -> &Global {
        &self.global
    }

    /// The roles.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// The state machine of `role`.
    pub fn local(&self, role: &str) -> Option<&Arc<LocalMachine>> {
        self.roles.get(role)
    }

    /// A monitor for one session, seen from `role`.
    pub fn monitor(&self, role: &str) -> Result<Monitor, UnknownRole> {
        self.roles
            .get(role)
            .map(|m| Monitor::new(self.name.clone(), role.into(), m.clone()))
            .ok_or_else(|| UnknownRole {
                protocol: self.name.clone(),
                role: role.into(),
            })
    }
}

#[cfg(test)]
mod tests;
