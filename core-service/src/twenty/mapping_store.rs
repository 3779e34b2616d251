//! Storage of the field mapping (`twenty_field_mappings`).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::mapping::{ContactField, Direction, Mapping, MappingEntry, TwentyField};
use crate::schema::twenty_field_mappings as mappings;

/// The stored mapping. Rows were validated when written; one that no longer parses (written
/// by a newer version) is left out rather than guessed at.
pub async fn load(connection: &mut AsyncPgConnection) -> QueryResult<Mapping> {
    let rows: Vec<(String, String, String)> = mappings::table
        .select((
            mappings::contact_field,
            mappings::twenty_field,
            mappings::direction,
        ))
        .load(connection)
        .await?;
    let entries = rows
        .into_iter()
        .filter_map(|(contact, twenty, direction)| {
            let entry = MappingEntry {
                contact: ContactField::parse(&contact)?,
                twenty: TwentyField::parse(&twenty)?,
                direction: Direction::parse(&direction)?,
            };
            Some(entry)
        })
        .collect();
    Ok(Mapping::new(entries).unwrap_or_else(|violations| {
        tracing::warn!(
            ?violations,
            "the stored Twenty mapping is inconsistent; sync uses none"
        );
        Mapping::default()
    }))
}

/// Replaces the stored mapping with `mapping`, on `connection` (inside the change's transaction).
pub async fn replace(connection: &mut AsyncPgConnection, mapping: &Mapping) -> QueryResult<()> {
    diesel::delete(mappings::table).execute(connection).await?;
    let rows: Vec<_> = mapping
        .entries()
        .iter()
        .map(|entry| {
            (
                mappings::contact_field.eq(entry.contact.as_string()),
                mappings::twenty_field.eq(entry.twenty.as_str().to_owned()),
                mappings::direction.eq(entry.direction.as_str()),
            )
        })
        .collect();
    diesel::insert_into(mappings::table)
        .values(rows)
        .execute(connection)
        .await
        .map(drop)
}
