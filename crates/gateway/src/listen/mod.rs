//! The listen layer: client connections come in here, are served by hyper on each worker's own
//! runtime, parked while idle, and handed to the proxy a request at a time.

pub mod l4;
pub mod limits;
pub mod lot;
pub mod park;
pub mod server;
pub mod stop;
pub mod tls;
