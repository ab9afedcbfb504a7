//! Small conversions between proto and domain values.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

/// A domain time as a proto timestamp.
pub fn ts(t: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// A proto timestamp as a domain time (None when absent or out of range).
pub fn from_ts(t: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

/// IP addresses as strings.
pub fn ips(v: &[std::net::IpAddr]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}
