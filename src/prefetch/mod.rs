//! Prefetch: have the fixes waiting at the site before anyone runs `dnf update`.
//!
//! Two halves:
//!
//! - [`plan`] (the `plan` submodule) is pure: from a snapshot's packages and advisories and
//!   the site's recent use, which package files to fetch, most urgent first, and which security
//!   advisories affect what the site uses ([`advisory_status`]).
//! - [`Queue`] (the `queue` submodule) carries a plan out on a running node: after each new
//!   snapshot (and at start-up) it plans every tree this node serves, then fetches the files
//!   one at a time as background work through the fetcher, so each one waits for the
//!   background hours, the budget, the site's cap and every client download (`uplink`), and
//!   a client asking for a file being prefetched joins that transfer and promotes it. Its
//!   state is the `prefetch` and `advisories` parts of `/api/status`.
//!
//! What this module deliberately does not do: choose sources or verify bytes (the fetcher
//! does, as for any miss), pace bytes (the uplink scheduler), evict (background work only
//! fills room the store has: [`crate::store::Store::room_for`]), or resolve dependencies.

mod plan;
mod queue;

pub use plan::*;
pub use queue::{NextFile, Queue, QueueStatus, RepoAdvisory, Settings};
