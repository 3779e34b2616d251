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
    page_size_or(requested, DEFAULT_PAGE_SIZE)
}

/// The requested page size of a configuration list (flows, rules, event types, endpoints),
/// bounded, and the largest when not asked: these lists answered everything before they were
/// paged, and a caller that does not page gets what it got then, up to [`MAX_PAGE_SIZE`] items
/// and [`MAX_PAGE_BYTES`].
pub fn configuration_page_size(requested: i32) -> Result<i64, FieldViolation> {
    page_size_or(requested, MAX_PAGE_SIZE)
}

fn page_size_or(requested: i32, default: i64) -> Result<i64, FieldViolation> {
    match i64::from(requested) {
        0 => Ok(default),
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

/// The page of `rows` (fetched with one row more than `page_size`, to learn whether another
/// page follows) converted by `message`, and the token that continues after it. A page also
/// ends early, before the first row that would take it past [`MAX_PAGE_BYTES`] (a page holds
/// at least one): rows that carry payloads could pass a client's limit long before the page is
/// full.
pub fn finish_page<T, K: PageKey, M: prost::Message>(
    rows: Vec<T>,
    page_size: i64,
    key: impl Fn(&T) -> K,
    message: impl Fn(T) -> M,
) -> (Vec<M>, String) {
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    let more_follow = rows.len() > size;
    let items = rows
        .into_iter()
        .take(size)
        .map(|row| (key(&row), message(row)));
    page_within_bytes(items, more_follow)
}

/// The page of `items` (messages with their keys, in order, already cut to the page's size)
/// that ends before [`MAX_PAGE_BYTES`] (a page holds at least one), and the token that
/// continues after it: after its last item when it was cut or `more_follow`, else none.
/// Items past the cut are not taken from the iterator.
pub fn page_within_bytes<K: PageKey, M: prost::Message>(
    items: impl IntoIterator<Item = (K, M)>,
    more_follow: bool,
) -> (Vec<M>, String) {
    let mut page = Vec::new();
    let mut bytes = 0;
    let mut last_key: Option<K> = None;
    for (key, item) in items {
        // The item's length prefix and tag, as a repeated field of the answer.
        bytes += item.encoded_len() + 6;
        // Past the bound with an item kept already (the first makes a page whatever its size).
        if bytes > MAX_PAGE_BYTES
            && let Some(last_key) = last_key
        {
            return (page, last_key.token());
        }
        page.push(item);
        last_key = Some(key);
    }
    let token = match last_key {
        Some(last_key) if more_follow => last_key.token(),
        _ => String::new(),
    };
    (page, token)
}

/// A page of configuration asked for, by name: its size, and the name it continues after.
pub struct NamePage {
    pub size: i64,
    pub after: Option<String>,
}

impl NamePage {
    pub fn of(page_size: i32, page_token: &str) -> Result<Self, FieldViolation> {
        let size = configuration_page_size(page_size)?;
        let after = (!page_token.is_empty())
            .then(|| decode_name_cursor(page_token))
            .transpose()?;
        Ok(Self { size, after })
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
        finish_page(
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
