//! How the admin commands print a response: `--json` prints the proto message in the
//! protobuf JSON mapping with the proto's snake_case field names, scalar and list fields present
//! even when empty (a stable shape for scripts; unset timestamps are left out, as the mapping
//! says); text output is built from that same JSON, as `key: value` lines or aligned columns.

use std::io::Write;
use std::sync::LazyLock;

use anyhow::Context;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value as Json;
use switchbord_api::v1;

/// A generated message and its full proto name, so that it can be read reflectively.
pub trait ProtoMessage: prost::Message {
    const NAME: &'static str;
}

macro_rules! proto_messages {
    ($($message:ident),* $(,)?) => {
        $(impl ProtoMessage for v1::$message {
            const NAME: &'static str = concat!("switchbord.v1.", stringify!($message));
        })*
    };
}

proto_messages!(
    CreateEndpointResponse,
    GetEndpointResponse,
    ListEndpointsResponse,
    DeleteEndpointResponse,
    EnableEndpointResponse,
    DisableEndpointResponse,
    SendTestEventResponse,
    ListOutboxJobsResponse,
    GetOutboxJobResponse,
    RetryOutboxJobResponse,
    GetOutboxStatsResponse,
);

static DESCRIPTORS: LazyLock<Result<DescriptorPool, prost_reflect::DescriptorError>> =
    LazyLock::new(|| DescriptorPool::decode(switchbord_api::FILE_DESCRIPTOR_SET));

/// The message in the protobuf JSON mapping: snake_case names, empty scalars and lists
/// included, enums by name, timestamps in RFC 3339, 64-bit integers as numbers.
pub fn to_json<M: ProtoMessage>(message: &M) -> anyhow::Result<Json> {
    let pool = DESCRIPTORS.as_ref().map_err(|error| {
        anyhow::anyhow!("the embedded proto descriptors are unreadable: {error}")
    })?;
    let descriptor = pool
        .get_message_by_name(M::NAME)
        .with_context(|| format!("{} is not in the embedded proto descriptors", M::NAME))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .with_context(|| format!("cannot read {} reflectively", M::NAME))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .with_context(|| format!("cannot write {} as JSON", M::NAME))
}

/// Prints `message` as JSON, or as the text `text` makes of its JSON form.
pub fn print<M: ProtoMessage>(
    message: &M,
    as_json: bool,
    text: impl FnOnce(&Json) -> String,
) -> anyhow::Result<()> {
    let value = to_json(message)?;
    let output = if as_json {
        value.to_string()
    } else {
        text(&value)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", output.trim_end()).context("cannot write to standard output")
}

/// One value as text: strings bare, lists comma-separated, enums without their type prefix,
/// objects as compact JSON, empty values as `-`.
pub fn cell(value: &Json) -> String {
    match value {
        Json::Null => "-".to_owned(),
        Json::String(text) if text.is_empty() => "-".to_owned(),
        Json::String(text) => text.clone(),
        Json::Array(items) if items.is_empty() => "-".to_owned(),
        Json::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Json::Object(fields) if fields.is_empty() => "-".to_owned(),
        other => other.to_string(),
    }
}

/// An enum value without its type prefix, lower-case: `ENDPOINT_HEALTH_LIVE` → `live`.
pub fn enum_cell(value: &Json, prefix: &str) -> String {
    let text = cell(value);
    text.strip_prefix(prefix)
        .unwrap_or(&text)
        .to_ascii_lowercase()
}

/// `key: value` lines of an object's fields, keys padded to one width.
pub fn fields(object: &Json) -> String {
    let Some(object) = object.as_object() else {
        return cell(object);
    };
    let width = object.keys().map(String::len).max().unwrap_or(0);
    object
        .iter()
        .map(|(key, value)| {
            format!(
                "{:<width$}  {}",
                format!("{key}:"),
                cell(value),
                width = width + 1
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A column of [`table`]: its title and how a row shows in it.
pub type Column<'a> = (&'a str, &'a dyn Fn(&Json) -> String);

/// Aligned columns under an upper-case header.
pub fn table(rows: &[Json], columns: &[Column<'_>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|(_, show)| show(row)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(index, (title, _))| {
            cells
                .iter()
                .map(|row| row[index].chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(value, width)| format!("{value:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    std::iter::once(line(
        columns
            .iter()
            .map(|(title, _)| title.to_uppercase())
            .collect(),
    ))
    .chain(cells.into_iter().map(line))
    .collect::<Vec<_>>()
    .join("\n")
}

/// `text` followed by how to ask for the next page of `what`, when `next_page_token` names one.
pub fn with_next_page(mut text: String, what: &str, next_page_token: &str) -> String {
    if !next_page_token.is_empty() {
        text.push_str(&format!("\n\nMore {what}: --page-token {next_page_token}"));
    }
    text
}

/// A column that shows one field of the row.
pub fn field(name: &'static str) -> impl Fn(&Json) -> String {
    move |row| cell(&row[name])
}

/// Longest text a [`clipped`] column shows.
const CLIP_AT: usize = 60;

/// A column for long free text (errors): cut at [`CLIP_AT`] characters, the full text is in
/// the single-item view and in `--json`.
pub fn clipped(name: &'static str) -> impl Fn(&Json) -> String {
    move |row| {
        let text = cell(&row[name]);
        if text.chars().count() <= CLIP_AT {
            return text;
        }
        let kept: String = text.chars().take(CLIP_AT - 1).collect();
        format!("{kept}…")
    }
}
