//! OpenTelemetry's wire messages (OTLP protobuf), shared by the event sink, which takes and
//! exports them, and by every process that ships its log lines to the sink ([`crate::log_ship`]).
//! Here, in the crate both depend on, so no component imports another.

pub mod proto;
pub mod proto_logs;
