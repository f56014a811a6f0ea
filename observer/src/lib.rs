//! Page-cache race observer: the agent side.
//!
//! Data path: kernel probes (observer-ebpf) → event ABI (observer-abi) →
//! [`loader`] (attach ladder) → [`source`] (ring buffer → [`event::Event`]) →
//! [`correlator`] (pure) → [`sink`] (text, JSON, summary).

pub mod agent;
pub mod cli;
pub mod correlator;
pub mod event;
pub mod filter;
pub mod health;
pub mod kmsg;
pub mod loader;
pub mod metrics;
pub mod paths;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod run;
pub mod scope;
pub mod signals;
pub mod sink;
pub mod source;
pub mod symbols;
pub mod trace;
