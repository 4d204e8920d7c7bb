//! lanmirror: a verified, crash-safe cache of RPM repositories for sites with one poor uplink.
//!
//! See ARCHITECTURE.md for the map; each module's own docs say what it is for and what it
//! deliberately leaves to others.

pub mod admin;
pub mod body;
pub mod bundle;
pub mod checksum;
pub mod config;
pub mod dashboard;
pub mod discovery;
pub mod evict;
pub mod fetch;
pub mod hash;
pub mod history;
pub mod http;
pub mod lookup;
pub mod metrics;
pub mod node;
pub mod paths;
pub mod peer;
pub mod prefetch;
pub mod range;
pub mod repodata;
pub mod respond;
pub mod seed;
pub mod setup;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod units;
pub mod uplink;
pub mod upstream;
pub mod window;
