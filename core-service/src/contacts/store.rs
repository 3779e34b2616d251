//! Queries on `contacts`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::model::ContactRow;
use crate::db::prepared;
use crate::schema::contacts;

/// The contacts that match a phone number or an external reference id, locked for update so
/// that concurrent upserts of the same person serialise. Takes the connection by shared
/// reference so that `BEGIN` can be pipelined with it.
pub async fn lock_matching(
    mut connection: &AsyncPgConnection,
    phone_number: &str,
    external_reference_id: Option<&str>,
) -> QueryResult<Vec<ContactRow>> {
    let by_phone = contacts::phone_number.eq(phone_number);
    let query = contacts::table.select(ContactRow::as_select()).for_update();
    match external_reference_id {
        Some(reference) => {
            query
                .filter(by_phone.or(contacts::external_reference_id.eq(reference)))
                .load(&mut connection)
                .await
        }
        None => query.filter(by_phone).load(&mut connection).await,
    }
}

/// The contact with `id`, locked for update. Takes the connection by shared reference so that
/// `BEGIN` can be pipelined with it.
pub async fn lock_by_id(
    mut connection: &AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<ContactRow>> {
    contacts::table
        .find(id)
        .select(ContactRow::as_select())
        .for_update()
        .first(&mut connection)
        .await
        .optional()
}

/// Inserts `row`. Takes the connection by shared reference so that the insert can be pipelined
/// with the rest of the write's transaction (nothing is read back: `row` is what is stored).
pub async fn insert(mut connection: &AsyncPgConnection, row: &ContactRow) -> QueryResult<()> {
    diesel::insert_into(contacts::table)
        .values(row)
        .execute(&mut connection)
        .await
        .map(drop)
}

/// Writes every mutable column of `row`; pipelined like [`insert`]. Every column is written,
/// so the statement's text never varies and it is prepared once per connection.
pub async fn update(mut connection: &AsyncPgConnection, row: &ContactRow) -> QueryResult<()> {
    prepared(diesel::update(contacts::table.find(row.id)).set((
        contacts::phone_number.eq(&row.phone_number),
        contacts::external_reference_id.eq(&row.external_reference_id),
        contacts::name.eq(&row.name),
        contacts::email.eq(&row.email),
        contacts::locale.eq(&row.locale),
        contacts::subscriber_status.eq(&row.subscriber_status),
        contacts::properties.eq(&row.properties),
        contacts::tags.eq(&row.tags),
        contacts::updated_at.eq(row.updated_at),
    )))
    .execute(&mut connection)
    .await
    .map(drop)
}

pub async fn find_by_id(connection: &mut AsyncPgConnection, id: Uuid) -> QueryResult<ContactRow> {
    contacts::table
        .find(id)
        .select(ContactRow::as_select())
        .first(connection)
        .await
}

pub async fn find_by_phone(
    mut connection: &AsyncPgConnection,
    phone_number: &str,
) -> QueryResult<ContactRow> {
    contacts::table
        .filter(contacts::phone_number.eq(phone_number))
        .select(ContactRow::as_select())
        .first(&mut connection)
        .await
}

/// The id of the contact with `phone_number`, for a caller that needs nothing else: the row's
/// other columns (its properties above all) are neither sent nor decoded.
pub async fn id_by_phone(
    mut connection: &AsyncPgConnection,
    phone_number: &str,
) -> QueryResult<Uuid> {
    contacts::table
        .filter(contacts::phone_number.eq(phone_number))
        .select(contacts::id)
        .first(&mut connection)
        .await
}

pub async fn find_by_reference(
    connection: &mut AsyncPgConnection,
    external_reference_id: &str,
) -> QueryResult<ContactRow> {
    contacts::table
        .filter(contacts::external_reference_id.eq(external_reference_id))
        .select(ContactRow::as_select())
        .first(connection)
        .await
}
