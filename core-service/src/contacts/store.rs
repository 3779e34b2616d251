//! Queries on `contacts`.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Array, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::model::ContactRow;
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

/// The contact with `id`, locked for update.
pub async fn lock_by_id(
    connection: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<ContactRow>> {
    contacts::table
        .find(id)
        .select(ContactRow::as_select())
        .for_update()
        .first(connection)
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

/// Writes every mutable column of `row`; pipelined like [`insert`].
pub async fn update(mut connection: &AsyncPgConnection, row: &ContactRow) -> QueryResult<()> {
    UpdateContact { row }
        .execute(&mut connection)
        .await
        .map(drop)
}

/// `UPDATE contacts SET … WHERE id = …` with every mutable column, as a statement of its own
/// type. diesel prepares its own UPDATE statements anew on every call (parsed and planned, a
/// round trip more, for 70 % of upserts); a fixed statement is prepared once per connection.
struct UpdateContact<'a> {
    row: &'a ContactRow,
}

impl QueryId for UpdateContact<'_> {
    type QueryId = UpdateContact<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for UpdateContact<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let row = self.row;
        out.push_sql("UPDATE contacts SET phone_number = ");
        out.push_bind_param::<Text, _>(&row.phone_number)?;
        out.push_sql(", external_reference_id = ");
        out.push_bind_param::<Nullable<Text>, _>(&row.external_reference_id)?;
        out.push_sql(", name = ");
        out.push_bind_param::<Nullable<Text>, _>(&row.name)?;
        out.push_sql(", email = ");
        out.push_bind_param::<Nullable<Text>, _>(&row.email)?;
        out.push_sql(", locale = ");
        out.push_bind_param::<Nullable<Text>, _>(&row.locale)?;
        out.push_sql(", subscriber_status = ");
        out.push_bind_param::<Text, _>(&row.subscriber_status)?;
        out.push_sql(", properties = ");
        out.push_bind_param::<Jsonb, _>(&row.properties)?;
        out.push_sql(", tags = ");
        out.push_bind_param::<Array<Text>, _>(&row.tags)?;
        out.push_sql(", updated_at = ");
        out.push_bind_param::<Timestamptz, _>(&row.updated_at)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<SqlUuid, _>(&row.id)?;
        Ok(())
    }
}

pub async fn find_by_id(connection: &mut AsyncPgConnection, id: Uuid) -> QueryResult<ContactRow> {
    contacts::table
        .find(id)
        .select(ContactRow::as_select())
        .first(connection)
        .await
}

pub async fn find_by_phone(
    connection: &mut AsyncPgConnection,
    phone_number: &str,
) -> QueryResult<ContactRow> {
    contacts::table
        .filter(contacts::phone_number.eq(phone_number))
        .select(ContactRow::as_select())
        .first(connection)
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

/// Inserts `row` unless its phone number exists; `None` when another write got there first.
pub async fn insert_if_absent(
    connection: &mut AsyncPgConnection,
    row: &ContactRow,
) -> QueryResult<Option<ContactRow>> {
    diesel::insert_into(contacts::table)
        .values(row)
        .on_conflict(contacts::phone_number)
        .do_nothing()
        .returning(ContactRow::as_returning())
        .get_result(connection)
        .await
        .optional()
}
