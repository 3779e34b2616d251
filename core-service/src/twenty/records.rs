//! Each contact's link to a Twenty person and its sync status (`twenty_contact_syncs`).

use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value as Json;
use switchbord_api::v1;
use uuid::Uuid;

use crate::contacts::timestamp;
use crate::schema::twenty_contact_syncs as syncs;
use crate::webhooks::same_origin;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    Pending,
    Synced,
    Failed,
    Unlinked,
}

impl SyncStatus {
    pub const ALL: [Self; 4] = [Self::Pending, Self::Synced, Self::Failed, Self::Unlinked];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Synced => "synced",
            Self::Failed => "failed",
            Self::Unlinked => "unlinked",
        }
    }

    fn from_db(text: &str) -> Self {
        match text {
            "synced" => Self::Synced,
            "failed" => Self::Failed,
            "unlinked" => Self::Unlinked,
            _ => Self::Pending,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = syncs, check_for_backend(diesel::pg::Pg))]
pub struct SyncRow {
    pub contact_id: Uuid,
    pub person_id: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub synced_at: Option<DateTime<Utc>>,
    pub synced_values: Json,
    pub remote_updated_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl SyncRow {
    pub fn status(&self) -> SyncStatus {
        SyncStatus::from_db(&self.status)
    }
}

impl From<SyncRow> for v1::ContactSync {
    fn from(row: SyncRow) -> Self {
        let status = match row.status() {
            SyncStatus::Pending => v1::SyncStatus::Pending,
            SyncStatus::Synced => v1::SyncStatus::Synced,
            SyncStatus::Failed => v1::SyncStatus::Failed,
            SyncStatus::Unlinked => v1::SyncStatus::Unlinked,
        };
        Self {
            contact_id: row.contact_id.to_string(),
            person_id: row.person_id.unwrap_or_default(),
            status: status.into(),
            last_error: row.last_error.unwrap_or_default(),
            attempts: row.attempts,
            last_attempt_at: row.last_attempt_at.map(timestamp),
            synced_at: row.synced_at.map(timestamp),
            updated_at: Some(timestamp(row.updated_at)),
        }
    }
}

pub async fn find(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
) -> QueryResult<Option<SyncRow>> {
    syncs::table
        .find(contact_id)
        .select(SyncRow::as_select())
        .first(connection)
        .await
        .optional()
}

/// How many advisory locks the people of Twenty webhooks are spread over (see [`lock_people`]),
/// the keys from `PERSON_LOCK_BASE` on (apart from the migration and bootstrap locks). Enough
/// that a backfill page (60 people by default) rarely holds up a webhook for someone else, few
/// enough that a batch of thousands takes a sixth of the server's lock table at most (64 per
/// connection by default, shared).
const PERSON_LOCK_BUCKETS: i64 = 1024;
const PERSON_LOCK_BASE: i64 = 0x5357_4254_5457_0000; // "SWBTTW" and the bucket

/// Holds the people `person_ids` until the transaction ends, so that the webhooks (and backfill
/// pages) applying one person serialise even before the person has a link whose row
/// [`lock_by_person`] could lock: two at once for a new person both found no link, and the one
/// committed last won, older or not. Advisory locks, one per bucket of a hash of the ids (a
/// shared bucket only serialises two people), taken in one statement in the buckets' order, so
/// that two calls naming the same people in different orders cannot deadlock. At most
/// [`PERSON_LOCK_BUCKETS`] per call: one lock per person of a batch of many thousands could use
/// up the server's shared lock table and fail other transactions.
pub async fn lock_people<'a>(
    connection: &mut AsyncPgConnection,
    person_ids: impl IntoIterator<Item = &'a str>,
) -> QueryResult<()> {
    use diesel::sql_types::{Array, Text};
    let person_ids: Vec<&str> = person_ids.into_iter().collect();
    if person_ids.is_empty() {
        return Ok(());
    }
    crate::db::prepared(
        diesel::sql_query(
            "SELECT pg_advisory_xact_lock(key) FROM (
             SELECT DISTINCT $3 + abs(hashtextextended(id, 0) % $2) AS key
               FROM unnest($1) AS id ORDER BY key) AS keys",
        )
        .bind::<Array<Text>, _>(person_ids)
        .bind::<diesel::sql_types::BigInt, _>(PERSON_LOCK_BUCKETS)
        .bind::<diesel::sql_types::BigInt, _>(PERSON_LOCK_BASE),
    )
    .execute(connection)
    .await
    .map(drop)
}

/// The link of `person_id`, locked (see also [`lock_people`]).
pub async fn lock_by_person(
    connection: &mut AsyncPgConnection,
    person_id: &str,
) -> QueryResult<Option<SyncRow>> {
    syncs::table
        .filter(syncs::person_id.eq(person_id))
        .select(SyncRow::as_select())
        .for_update()
        .first(connection)
        .await
        .optional()
}

/// Marks the contact as waiting for a sync; unlinked contacts stay unlinked (their person was
/// deleted in Twenty and is not silently recreated). Returns whether a sync should be queued.
///
/// One statement, so that a webhook unlinking the contact concurrently is never overwritten: the
/// conflict update locks the row and re-checks its status after any concurrent change commits.
pub async fn mark_pending(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    // `ON CONFLICT … DO UPDATE … WHERE` is this trait's `filter`, not `QueryDsl`'s.
    use diesel::query_dsl::methods::FilterDsl;
    diesel::insert_into(syncs::table)
        .values((
            syncs::contact_id.eq(contact_id),
            syncs::status.eq(SyncStatus::Pending.as_str()),
            syncs::updated_at.eq(now),
        ))
        .on_conflict(syncs::contact_id)
        .do_update()
        .set((
            syncs::status.eq(SyncStatus::Pending.as_str()),
            syncs::updated_at.eq(now),
        ))
        .filter(syncs::status.ne(SyncStatus::Unlinked.as_str()))
        .execute(connection)
        .await
        .map(|written| written == 1)
}

/// Records that links are now made with the Twenty at `base_url`, and answers whether the ones
/// kept were made with another (another origin), which a caller then forgets
/// ([`forget_links`]). Survives a deleted connection, so that a connection to another Twenty
/// made after a delete is recognised too.
pub async fn links_now_with(
    connection: &mut AsyncPgConnection,
    base_url: &str,
) -> QueryResult<bool> {
    use diesel::sql_types::{Nullable, Text};

    #[derive(QueryableByName)]
    struct Previous {
        #[diesel(sql_type = Nullable<Text>)]
        base_url: Option<String>,
    }

    let previous: Previous = diesel::sql_query(
        "WITH previous AS (SELECT base_url FROM twenty_links_origin FOR UPDATE),
              recorded AS (
                  INSERT INTO twenty_links_origin (id, base_url, recorded_at) VALUES (true, $1, now())
                  ON CONFLICT (id) DO UPDATE SET base_url = $1, recorded_at = now()
              )
         SELECT (SELECT base_url FROM previous) AS base_url",
    )
    .bind::<Text, _>(base_url)
    .get_result(connection)
    .await?;
    Ok(previous
        .base_url
        .is_some_and(|previous| !same_origin(&previous, base_url)))
}

/// Forgets every contact's link and sync state, and the backfill (a connection moved to another
/// Twenty): each contact is then as one never synced, and a backfill starts from the new
/// Twenty's first page. Answers how many links were forgotten.
pub async fn forget_links(connection: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::delete(crate::schema::twenty_backfill::table)
        .execute(connection)
        .await?;
    diesel::delete(syncs::table).execute(connection).await
}

/// Marks pending every linked contact changed since its last sync: for a new connection, after
/// a time without one, when the changes made meanwhile reached no sync (without a connection,
/// contact events queue none). Answers how many.
pub async fn mark_changed_since_synced(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE twenty_contact_syncs AS sync SET status = 'pending', updated_at = $1
           FROM contacts AS contact
          WHERE contact.id = sync.contact_id AND sync.status = 'synced'
            AND sync.person_id IS NOT NULL
            AND contact.updated_at > COALESCE(sync.synced_at, sync.updated_at)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .execute(connection)
    .await
}

/// How long a sync job holds its contact: past its calls to Twenty (15 s each, at most three),
/// and no longer than a job that died holding it keeps the next one waiting.
const SYNC_HOLD: chrono::Duration = chrono::Duration::seconds(60);

/// Whether a sync job may go on with its contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// This job holds the contact until it lets go (or the hold runs out).
    Taken,
    /// Another sync of the contact is running: try again once it is done.
    HeldByAnother,
    /// The contact has no sync record (deleted meanwhile): nothing to hold.
    NoRecord,
}

/// Takes the contact for one sync job. Two jobs for one contact (its `contact.created` and a
/// `contact.updated` right after) would otherwise both find no person and both create one, or
/// the older would push its values over the newer's.
pub async fn take_for_sync(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Hold> {
    let taken = diesel::update(
        syncs::table.find(contact_id).filter(
            syncs::syncing_until
                .is_null()
                .or(syncs::syncing_until.lt(now)),
        ),
    )
    .set(syncs::syncing_until.eq(now + SYNC_HOLD))
    .execute(connection)
    .await?;
    if taken == 1 {
        return Ok(Hold::Taken);
    }
    let exists = syncs::table
        .find(contact_id)
        .select(syncs::contact_id)
        .first::<Uuid>(connection)
        .await
        .optional()?
        .is_some();
    Ok(if exists {
        Hold::HeldByAnother
    } else {
        Hold::NoRecord
    })
}

/// Ends a sync job's hold on the contact.
pub async fn let_go(connection: &mut AsyncPgConnection, contact_id: Uuid) -> QueryResult<()> {
    diesel::update(syncs::table.find(contact_id))
        .set(syncs::syncing_until.eq(None::<DateTime<Utc>>))
        .execute(connection)
        .await
        .map(drop)
}

/// Twenty holds `values` for the contact, as person `person_id` last changed at `remote_updated_at`.
pub async fn record_synced(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    person_id: &str,
    values: &Json,
    remote_updated_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(syncs::table)
        .values((
            syncs::contact_id.eq(contact_id),
            syncs::person_id.eq(person_id),
            syncs::status.eq(SyncStatus::Synced.as_str()),
            syncs::attempts.eq(0),
            syncs::last_error.eq(None::<String>),
            syncs::synced_at.eq(now),
            syncs::synced_values.eq(values),
            syncs::remote_updated_at.eq(remote_updated_at),
            syncs::updated_at.eq(now),
        ))
        .on_conflict(syncs::contact_id)
        .do_update()
        .set((
            syncs::person_id.eq(excluded(syncs::person_id)),
            syncs::status.eq(excluded(syncs::status)),
            syncs::attempts.eq(0),
            syncs::last_error.eq(None::<String>),
            syncs::synced_at.eq(now),
            syncs::synced_values.eq(excluded(syncs::synced_values)),
            syncs::deleted_person_id.eq(None::<String>),
            // Never move the known Twenty version backwards.
            syncs::remote_updated_at.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >(
                "GREATEST(twenty_contact_syncs.remote_updated_at, excluded.remote_updated_at)",
            )),
            syncs::updated_at.eq(now),
        ))
        .execute(connection)
        .await
        .map(drop)
}

/// Like [`record_synced`] for a link read at `read_at` (its `updated_at`): written only when
/// nothing changed the record since, so that a sync job never overwrites what a concurrent
/// webhook or sync stored. Returns whether it was written.
pub async fn record_synced_if_unchanged(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    read_at: DateTime<Utc>,
    person_id: &str,
    values: &Json,
    remote_updated_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    diesel::update(
        syncs::table
            .find(contact_id)
            .filter(syncs::updated_at.eq(read_at)),
    )
    .set((
        syncs::person_id.eq(person_id),
        syncs::status.eq(SyncStatus::Synced.as_str()),
        syncs::attempts.eq(0),
        syncs::last_error.eq(None::<String>),
        syncs::synced_at.eq(now),
        syncs::synced_values.eq(values),
        // Linked again: a deleted person it remembered no longer names its versions.
        syncs::deleted_person_id.eq(None::<String>),
        syncs::remote_updated_at.eq(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
        >("GREATEST(twenty_contact_syncs.remote_updated_at, ")
        .bind::<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>, _>(remote_updated_at)
        .sql(")")),
        syncs::updated_at.eq(now),
    ))
    .execute(connection)
    .await
    .map(|updated| updated == 1)
}

/// Links the contact to `person_id`, with the values the sync left it holding, if it is linked
/// to no person (and was not unlinked by a deletion in Twenty), leaving its status to the next
/// sync. Without the values, that sync would compare the contact with none and write its
/// blanks too.
pub async fn link_if_unlinked(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    person_id: &str,
    values: &Json,
    remote_updated_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(
        syncs::table
            .find(contact_id)
            .filter(syncs::person_id.is_null())
            .filter(syncs::status.ne(SyncStatus::Unlinked.as_str())),
    )
    .set((
        syncs::person_id.eq(person_id),
        syncs::synced_values.eq(values),
        syncs::deleted_person_id.eq(None::<String>),
        syncs::remote_updated_at.eq(remote_updated_at),
        syncs::updated_at.eq(now),
    ))
    .execute(connection)
    .await
    .map(drop)
}

/// A sync attempt failed; `status` is pending (to be retried) or failed (for good). A link that
/// a webhook unlinked meanwhile stays unlinked.
pub async fn record_failure(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    status: SyncStatus,
    error: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    let linked = [SyncStatus::Pending, SyncStatus::Synced, SyncStatus::Failed];
    record_failure_from(connection, contact_id, &linked, status, error, now)
        .await
        .map(drop)
}

/// Fails the contact's sync with `error` if it still waits for one (`pending`): a job that
/// was dead-lettered after a later one synced the contact leaves it synced. Whether it did.
pub async fn fail_if_pending(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    error: &str,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let pending = [SyncStatus::Pending];
    record_failure_from(
        connection,
        contact_id,
        &pending,
        SyncStatus::Failed,
        error,
        now,
    )
    .await
}

/// Records a failed sync of the contact as `status`, if its sync is in one of `from`; whether
/// it was.
async fn record_failure_from(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    from: &[SyncStatus],
    status: SyncStatus,
    error: &str,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let from: Vec<&str> = from.iter().map(|status| status.as_str()).collect();
    diesel::update(
        syncs::table
            .find(contact_id)
            .filter(syncs::status.eq_any(from)),
    )
    .set((
        syncs::status.eq(status.as_str()),
        syncs::attempts.eq(syncs::attempts + 1),
        syncs::last_error.eq(error),
        syncs::last_attempt_at.eq(now),
        syncs::updated_at.eq(now),
    ))
    .execute(connection)
    .await
    .map(|updated| updated == 1)
}

/// The person is gone from Twenty: drop the link, keep the contact. The person and the delete's
/// `version` are kept (see [`deleted_version`]). Only while the contact is linked to that person
/// and, given `read_at`, its record is as read then (its `updated_at`): a sync that found the
/// person gone must not undo a webhook that linked it again meanwhile (a restore). Returns
/// whether it unlinked.
pub async fn unlink(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    person_id: &str,
    version: DateTime<Utc>,
    read_at: Option<DateTime<Utc>>,
    reason: &str,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Nullable, Timestamptz};
    let mut unlink = diesel::update(
        syncs::table
            .find(contact_id)
            .filter(syncs::person_id.eq(person_id)),
    )
    .set((
        syncs::person_id.eq(None::<String>),
        syncs::deleted_person_id.eq(person_id),
        // Never moved backwards, as in `record_synced`.
        syncs::remote_updated_at.eq(sql::<Nullable<Timestamptz>>("GREATEST(remote_updated_at, ")
            .bind::<Timestamptz, _>(version)
            .sql(")")),
        syncs::status.eq(SyncStatus::Unlinked.as_str()),
        syncs::last_error.eq(reason),
        syncs::synced_values.eq(Json::Object(Default::default())),
        syncs::updated_at.eq(now),
    ))
    .into_boxed();
    if let Some(read_at) = read_at {
        unlink = unlink.filter(syncs::updated_at.eq(read_at));
    }
    unlink.execute(connection).await.map(|updated| updated == 1)
}

/// The version of `person_id`'s delete, when Twenty deleted it while it was linked: an update
/// of the person no newer than that is stale, however late it arrives.
pub async fn deleted_version(
    connection: &mut AsyncPgConnection,
    person_id: &str,
) -> QueryResult<Option<DateTime<Utc>>> {
    syncs::table
        .filter(syncs::deleted_person_id.eq(person_id))
        .select(diesel::dsl::max(syncs::remote_updated_at))
        .first(connection)
        .await
}

/// Contacts per status.
pub async fn counts(connection: &mut AsyncPgConnection) -> QueryResult<Vec<(String, i64)>> {
    syncs::table
        .group_by(syncs::status)
        .select((syncs::status, count_star()))
        .load(connection)
        .await
}

/// One page of failed syncs, most recently changed first, after the `(updated_at, contact_id)`
/// cursor.
pub async fn failed_page(
    connection: &mut AsyncPgConnection,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<SyncRow>> {
    let mut query = syncs::table
        .filter(syncs::status.eq(SyncStatus::Failed.as_str()))
        .select(SyncRow::as_select())
        .order((syncs::updated_at.desc(), syncs::contact_id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some((time, id)) = after {
        query = query.filter(
            syncs::updated_at
                .lt(time)
                .or(syncs::updated_at.eq(time).and(syncs::contact_id.lt(id))),
        );
    }
    query.load(connection).await
}

/// Sets the contact's sync back to pending when it failed or was unlinked; answers whether it
/// did. (Every failed one at once: [`super::sync::requeue_failed_syncs`].)
pub async fn requeue(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let requeued = diesel::update(syncs::table)
        .filter(syncs::contact_id.eq(contact_id))
        .filter(syncs::status.eq_any([SyncStatus::Failed.as_str(), SyncStatus::Unlinked.as_str()]))
        .set((
            syncs::status.eq(SyncStatus::Pending.as_str()),
            syncs::attempts.eq(0),
            syncs::updated_at.eq(now),
        ))
        .execute(connection)
        .await?;
    Ok(requeued > 0)
}
