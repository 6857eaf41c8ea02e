//! The upstream layer: the live instances of every service, how one is chosen for a request,
//! and what the gateway knows of each one's health.

pub mod balance;
pub mod breaker;
pub mod check;
pub mod health;
pub mod instances;
pub mod schedule;
