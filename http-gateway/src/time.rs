//! Timestamps in JSON bodies: RFC 3339 in UTC with microseconds.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn rfc3339(timestamp: prost_types::Timestamp) -> String {
    let nanos = u32::try_from(timestamp.nanos).unwrap_or_default();
    DateTime::<Utc>::from_timestamp(timestamp.seconds, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}
