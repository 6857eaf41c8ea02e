//! The route layer: which requests go to which service, who may make them, how fast, and how a
//! service's traffic is split between its versions.

pub mod canary;
pub mod deploy;
pub mod index;
pub mod ratelimit;
pub mod ratelimit_redis;
pub mod routes;
