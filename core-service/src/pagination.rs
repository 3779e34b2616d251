//! Keyset pagination shared by the list RPCs: pages ordered newest first by (time, id), or by
//! name for configuration, with an opaque token naming where the previous page ended.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::FieldViolation;
use crate::validation::within_storable_years;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;
/// The most a page's items may take encoded, whatever its size in items: gRPC clients refuse
/// answers over 4 MiB unless told otherwise (tonic, grpc-go, grpc-java and Python's grpcio
/// alike), and items that carry payloads could reach it long before the page is full.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

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

fn not_a_token() -> FieldViolation {
    FieldViolation::new("page_token", "is not a token from a previous page")
}

fn token_text(token: &str) -> Result<String, FieldViolation> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(not_a_token)
}

pub fn decode_cursor(token: &str) -> Result<(DateTime<Utc>, Uuid), FieldViolation> {
    let text = token_text(token)?;
    let (micros, id) = text.split_once(':').ok_or_else(not_a_token)?;
    let time = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .filter(within_storable_years)
        .ok_or_else(not_a_token)?;
    Ok((time, Uuid::parse_str(id).map_err(|_| not_a_token())?))
}

/// The token of a page of configuration ordered by name, continuing after `name`.
pub fn encode_name_cursor(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name)
}

/// The name a token of [`encode_name_cursor`] continues after. Any text is a position in the
/// order, but one with a NUL cannot be compared by PostgreSQL.
pub fn decode_name_cursor(token: &str) -> Result<String, FieldViolation> {
    token_text(token).and_then(|name| {
        if name.contains('\0') {
            Err(not_a_token())
        } else {
            Ok(name)
        }
    })
}

/// Where a page ended, as the next page's token names it.
pub trait PageKey {
    fn token(&self) -> String;
}

impl PageKey for (DateTime<Utc>, Uuid) {
    fn token(&self) -> String {
        encode_cursor(self.0, self.1)
    }
}

/// A configuration item's name (see [`encode_name_cursor`]).
impl PageKey for String {
    fn token(&self) -> String {
        encode_name_cursor(self)
    }
}

/// As [`finish_page`], for rows whose messages may be large: converts them with `message` and
/// ends the page early, at the first that would take it past [`MAX_PAGE_BYTES`] (a page holds
/// at least one), answering the token that continues from there.
pub fn finish_page_within_bytes<T, K: PageKey, M: prost::Message>(
    rows: Vec<T>,
    page_size: i64,
    key: impl Fn(&T) -> K,
    message: impl Fn(T) -> M,
) -> (Vec<M>, String) {
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    let has_more = rows.len() > size;
    let mut page = Vec::with_capacity(rows.len().min(size));
    let mut bytes = 0;
    let mut last_key: Option<K> = None;
    for row in rows.into_iter().take(size) {
        let row_key = key(&row);
        let item = message(row);
        // The item's length prefix and tag, as a repeated field of the answer.
        bytes += item.encoded_len() + 6;
        // Past the bound with a row kept already (the first row makes a page whatever its size).
        if bytes > MAX_PAGE_BYTES
            && let Some(last_key) = last_key
        {
            return (page, last_key.token());
        }
        page.push(item);
        last_key = Some(row_key);
    }
    let token = match last_key {
        Some(last_key) if has_more => last_key.token(),
        _ => String::new(),
    };
    (page, token)
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

#[cfg(test)]
mod tests {
    use prost_types::Value;
    use prost_types::value::Kind;

    use super::*;

    /// Rows of `sizes` bytes each, newest first.
    fn rows(sizes: &[usize]) -> Vec<(DateTime<Utc>, Uuid, usize)> {
        let now = Utc::now();
        sizes
            .iter()
            .enumerate()
            .map(|(age, &size)| {
                let age = i64::try_from(age).expect("few rows");
                (now - chrono::Duration::seconds(age), Uuid::now_v7(), size)
            })
            .collect()
    }

    fn page(rows: Vec<(DateTime<Utc>, Uuid, usize)>, page_size: i64) -> (Vec<Value>, String) {
        finish_page_within_bytes(
            rows,
            page_size,
            |&(time, id, _)| (time, id),
            |(_, _, size)| Value {
                kind: Some(Kind::StringValue("x".repeat(size))),
            },
        )
    }

    #[test]
    fn a_page_of_large_items_ends_before_its_bytes_pass_the_bound() {
        const MIB: usize = 1024 * 1024;
        let all = rows(&[MIB, MIB, MIB, MIB, 10]);
        let (items, token) = page(all.clone(), 5);
        assert_eq!(items.len(), 2, "a third MiB would pass the bound");
        let (time, id, _) = all[1];
        assert_eq!(
            token,
            encode_cursor(time, id),
            "the next page starts at the third"
        );
    }

    #[test]
    fn an_item_past_the_bound_alone_still_makes_a_page() {
        let all = rows(&[MAX_PAGE_BYTES + 1, 10]);
        let (items, token) = page(all.clone(), 5);
        assert_eq!(items.len(), 1);
        assert_eq!(token, encode_cursor(all[0].0, all[0].1));
    }

    #[test]
    fn small_items_page_by_count_alone() {
        let all = rows(&[10, 10, 10]);
        let (items, token) = page(all.clone(), 2);
        assert_eq!(items.len(), 2);
        assert_eq!(token, encode_cursor(all[1].0, all[1].1));
        let (items, token) = page(all, 3);
        assert_eq!(items.len(), 3);
        assert_eq!(token, "", "the last page");
    }
}
