//! Keyset pagination shared by the list RPCs: pages ordered newest first by (time, id), with
//! an opaque token naming where the previous page ended.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::FieldViolation;
use crate::validation::within_storable_years;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// The requested page size, defaulted and bounded.
pub fn page_size(requested: i32) -> Result<i64, FieldViolation> {
    match i64::from(requested) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if (1..=MAX_PAGE_SIZE).contains(&size) => Ok(size),
        _ => Err(FieldViolation::new(
            "page_size",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        )),
    }
}

pub fn encode_cursor(time: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", time.timestamp_micros()))
}

pub fn decode_cursor(token: &str) -> Result<(DateTime<Utc>, Uuid), FieldViolation> {
    let invalid = || FieldViolation::new("page_token", "is not a token from a previous page");
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let (micros, id) = text.split_once(':').ok_or_else(invalid)?;
    let time = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .filter(within_storable_years)
        .ok_or_else(invalid)?;
    Ok((time, Uuid::parse_str(id).map_err(|_| invalid())?))
}

/// Cuts the extra row a query fetched to learn whether another page follows, and returns the
/// token for that page.
pub fn finish_page<T>(
    rows: &mut Vec<T>,
    page_size: i64,
    key: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> String {
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    let has_more = rows.len() > size;
    rows.truncate(size);
    match rows.last() {
        Some(last) if has_more => {
            let (time, id) = key(last);
            encode_cursor(time, id)
        }
        _ => String::new(),
    }
}
