//! Blocktree's churn simulator: what happens to lookups and data when nodes come and go.
//!
//! A [`Scenario`] (a TOML file) says how many nodes, for how long, how they come and go
//! (session and off-line times from an exponential or a Weibull distribution, crashes
//! among the departures) and what they do meanwhile (register paths, resolve them,
//! publish on pub-sub topics, put and get files).
//! [`Schedule::generate`] turns a scenario and a seed into the exact list of events to
//! play: the same scenario and seed give the same schedule, so a failing run can be
//! replayed and kept as a regression test.
//!
//! ```
//! use simulator::{Scenario, Schedule};
//! let scenario: Scenario = toml::from_str(r#"
//!     nodes = 20
//!     duration_secs = 600
//!     warm_up_secs = 60
//!     [churn]
//!     median_session_secs = 120
//! "#).unwrap();
//! let schedule = Schedule::generate(&scenario, 7).unwrap();
//! assert_eq!(schedule, Schedule::generate(&scenario, 7).unwrap());
//! assert!(schedule.summary().joins >= 20);
//! ```
//!
//! [`play()`] plays a schedule against real overlay nodes on the memory transport and
//! returns a [`Report`]: resolutions (success, latency, hops), pub-sub delivery, file
//! availability and repair traffic, connections and memory, per simulated minute;
//! [`plot::svg`] draws it.

pub mod files;
pub mod play;
pub mod plot;
pub mod scenario;
pub mod schedule;

pub use play::{Report, Totals, Window, play};
pub use scenario::{Churn, Distribution, Files, NodeTimers, Scenario, ScenarioError, Workload};
pub use schedule::{Event, EventKind, Schedule, Summary};
