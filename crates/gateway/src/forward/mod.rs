//! Forwarding: sending a routed request to an instance and relaying its answer.

pub mod attempt;
pub mod send;
