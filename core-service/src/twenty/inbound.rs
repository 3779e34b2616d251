//! Inbound sync: Twenty's person webhooks, verified, applied to contacts through the mapping.
//!
//! Conflict rule (docs/twenty.md): an event is applied only when its person version
//! (`record.updatedAt`) is newer than the newest version already seen, and, when the contact has
//! local changes Twenty does not have yet, newer than the contact's last change. The losing side
//! is then corrected by the next outbound sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use phonenumber::country;
use rand::RngCore;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use switchbord_api::v1::{
    ReceiveTwentyWebhookRequest, TwentyWebhookOutcome as Outcome, TwentyWebhookResult,
};
use uuid::Uuid;

use super::mapping::Mapping;
use super::records::{self, SyncRow};
use super::signature::{Signature, SignatureError};
use super::sync::{person_id, queue_sync, time_field, updated_at, values_json};
use super::{connection, mapping_store};
use crate::config::Secret;
use crate::config_watch::{Cached, ConfigWatch};
use crate::contacts::{
    self, ContactError, ContactRow, ContactUpsert, Operation, update_by_id_on, upsert_on,
    validate_upsert,
};
use crate::db;
use crate::error::{FieldViolation, ServiceError};
use crate::events::Audience;
use crate::request::RequestContext;
use crate::schema::twenty_webhook_nonces as nonces;

/// One person event out of a webhook call.
#[derive(Debug)]
struct PersonEvent {
    name: String,
    record: Json,
}

/// What the inbound path needs besides the request.
pub struct InboundSettings {
    pub tolerance: Duration,
    pub default_region: Option<country::Id>,
    /// Who acts on the events of the contacts changed.
    pub audience: Audience,
}

/// The webhook secret, read from the database only after the connection changed (see
/// [`crate::config_watch`]): once read, a call whose signature is wrong costs no round trip.
pub struct WebhookSecret {
    cached: Cached<Option<Secret>>,
    /// What a call is verified against while no secret is configured, so that it costs what a
    /// wrong signature costs. Random, so that no caller holds it.
    stand_in: Secret,
    /// When a call was last refused for want of a secret, in seconds since the epoch: the log
    /// says so at most once a minute, however often unauthenticated callers call.
    warned_at: AtomicI64,
}

/// How often the log may say that calls are refused for want of a secret, in seconds.
const WARN_EVERY_SECONDS: i64 = 60;
/// The longest event name read (Twenty's are `person.updated` and the like).
const MAX_EVENT_NAME_CHARS: usize = 100;

impl WebhookSecret {
    pub fn new(config: ConfigWatch) -> Self {
        let mut random = [0_u8; 32];
        rand::rng().fill_bytes(&mut random);
        Self {
            cached: Cached::new(config),
            stand_in: Secret::new(hex::encode(random)),
            warned_at: AtomicI64::new(i64::MIN),
        }
    }

    async fn get(&self, pool: &db::DbPool) -> Result<Arc<Option<Secret>>, ServiceError> {
        self.cached
            .get(|| async {
                let mut connection = db::connection(pool).await?;
                let twenty = connection::load(&mut connection).await?;
                Ok::<_, ServiceError>(
                    twenty.and_then(|twenty| twenty.webhook_secret.map(Secret::new)),
                )
            })
            .await
    }

    /// Checks the call's signature, refusing what can be refused before the secret is read.
    /// Without a connection or a webhook secret the caller is told what a wrong signature is
    /// told: whether Twenty is connected is not for an unauthenticated caller to learn. The
    /// operator is told in the log.
    async fn verify(
        &self,
        pool: &db::DbPool,
        settings: &InboundSettings,
        now: DateTime<Utc>,
        request: &ReceiveTwentyWebhookRequest,
    ) -> Result<DateTime<Utc>, ServiceError> {
        let refused = |error: SignatureError| ServiceError::Unauthenticated(error.to_string());
        let signature = Signature::read(&request.timestamp, &request.signature).map_err(refused)?;
        let secret = self.get(pool).await?;
        let Some(secret) = secret.as_ref() else {
            self.warn_unconfigured(now);
            let _ = signature.verify(
                self.stand_in.expose(),
                &request.body,
                now,
                settings.tolerance,
            );
            return Err(refused(SignatureError::Mismatch));
        };
        signature
            .verify(secret.expose(), &request.body, now, settings.tolerance)
            .map_err(refused)
    }

    fn warn_unconfigured(&self, now: DateTime<Utc>) {
        let now = now.timestamp();
        // (Spelled out: diesel's `RunQueryDsl::load` is in scope too.)
        let last = AtomicI64::load(&self.warned_at, Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_SECONDS
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "refused a Twenty webhook call: no Twenty connection with a webhook secret is configured (said at most once a minute)"
            );
        }
    }
}

/// Verifies the call, refuses replays, and applies each record, all in one transaction.
pub async fn receive(
    pool: &db::DbPool,
    context: &RequestContext,
    settings: &InboundSettings,
    secret: &WebhookSecret,
    now: DateTime<Utc>,
    request: &ReceiveTwentyWebhookRequest,
) -> Result<Vec<TwentyWebhookResult>, ServiceError> {
    let signed_at = secret.verify(pool, settings, now, request).await?;
    let events =
        parse(&request.body).map_err(|violation| ServiceError::InvalidArgument(vec![violation]))?;
    // What the signature covers, not the nonce (which it does not cover, so a replay could
    // change it) nor the signature's spelling (hex in either case verifies).
    let replay_key = format!(
        "signed:{}",
        hex::encode(
            Sha256::new()
                .chain_update(request.timestamp.trim())
                .chain_update(":")
                .chain_update(&request.body)
                .finalize()
        )
    );
    let mut connection = db::connection(pool).await?;
    let mapping = mapping_store::load(&mut connection).await?;
    let forget_before =
        now - chrono::Duration::from_std(settings.tolerance * 2).unwrap_or_default();

    connection
        .transaction(async |connection| {
            diesel::delete(nonces::table.filter(nonces::received_at.lt(forget_before)))
                .execute(connection)
                .await?;
            let fresh = diesel::insert_into(nonces::table)
                .values((nonces::nonce.eq(&replay_key), nonces::received_at.eq(now)))
                .on_conflict_do_nothing()
                .execute(connection)
                .await?;
            if fresh == 0 {
                return Err(ServiceError::Unauthenticated(
                    "this webhook call was already received (replayed)".to_owned(),
                ));
            }
            records::lock_people(
                connection,
                events.iter().filter_map(|event| person_id(&event.record)),
            )
            .await?;
            let mut results = Vec::with_capacity(events.len());
            for event in &events {
                let apply = Apply {
                    context,
                    audience: &settings.audience,
                    mapping: &mapping,
                    default_region: settings.default_region,
                    signed_at,
                    now,
                };
                results.push(apply.event(connection, event).await?);
            }
            Ok(results)
        })
        .await
}

/// Accepts the single-record shape (`record`) and the batched one (`items[].record`).
fn parse(body: &[u8]) -> Result<Vec<PersonEvent>, FieldViolation> {
    let body: Json = serde_json::from_slice(body)
        .ok()
        .filter(Json::is_object)
        .ok_or_else(|| FieldViolation::new("body", "must be a JSON object"))?;
    let name = body
        .get("eventName")
        .and_then(Json::as_str)
        .ok_or_else(|| FieldViolation::new("eventName", "is required"))?
        .to_owned();
    // Twenty's are a few words (`person.updated`); the name is quoted in each record's result.
    if name.chars().count() > MAX_EVENT_NAME_CHARS {
        return Err(FieldViolation::new(
            "eventName",
            format!("must be at most {MAX_EVENT_NAME_CHARS} characters"),
        ));
    }
    let (records, batched): (Vec<Json>, bool) = match (body.get("items"), body.get("record")) {
        (Some(Json::Array(items)), _) => (
            items
                .iter()
                .map(|item| item.get("record").cloned().unwrap_or(Json::Null))
                .collect(),
            true,
        ),
        (_, Some(record)) => (vec![record.clone()], false),
        _ => return Err(FieldViolation::new("record", "is required")),
    };
    if let Some(index) = records.iter().position(|record| !record.is_object()) {
        let field = if batched {
            format!("items[{index}].record")
        } else {
            "record".to_owned()
        };
        return Err(FieldViolation::new(field, "must be an object"));
    }
    Ok(records
        .into_iter()
        .map(|record| PersonEvent {
            name: name.clone(),
            record,
        })
        .collect())
}

pub(super) struct Apply<'a> {
    pub context: &'a RequestContext,
    pub audience: &'a Audience,
    pub mapping: &'a Mapping,
    pub default_region: Option<country::Id>,
    /// The version assumed for records without `updatedAt`.
    pub signed_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl Apply<'_> {
    async fn event(
        &self,
        connection: &mut AsyncPgConnection,
        event: &PersonEvent,
    ) -> Result<TwentyWebhookResult, ServiceError> {
        let Some(person_id) = person_id(&event.record).map(str::to_owned) else {
            return Ok(result("", None, Outcome::Skipped, "the record has no id"));
        };
        let link = records::lock_by_person(connection, &person_id).await?;
        match event.name.as_str() {
            "person.deleted" | "person.destroyed" => Ok(match link {
                // Twenty sends one request per event, so they can arrive out of order: a delete
                // older than a restore already applied is not the person's state.
                Some(link)
                    if link
                        .remote_updated_at
                        .is_some_and(|seen| self.deleted_version(&event.record) < seen) =>
                {
                    result(
                        &person_id,
                        Some(link.contact_id),
                        Outcome::Stale,
                        "a newer version of this person was already applied",
                    )
                }
                Some(link) => {
                    records::unlink(
                        connection,
                        link.contact_id,
                        &person_id,
                        self.deleted_version(&event.record),
                        // Locked (`lock_by_person`): as read.
                        None,
                        "the person was deleted in Twenty",
                        self.now,
                    )
                    .await?;
                    result(&person_id, Some(link.contact_id), Outcome::Unlinked, "")
                }
                None => result(
                    &person_id,
                    None,
                    Outcome::Skipped,
                    "not linked to a contact",
                ),
            }),
            "person.created" | "person.updated" | "person.restored" => match link {
                Some(link) => {
                    self.linked(connection, &person_id, &event.record, link)
                        .await
                }
                // An update that arrives after the person's delete, though older, would link
                // the contact to a person that no longer exists, and its next change would
                // create the person again.
                None if self
                    .deleted_since(connection, &person_id, &event.record)
                    .await? =>
                {
                    Ok(result(
                        &person_id,
                        None,
                        Outcome::Stale,
                        "the person was deleted in Twenty after this version",
                    ))
                }
                None => Ok(self
                    .unlinked(connection, &person_id, &event.record)
                    .await?
                    .0),
            },
            other => Ok(result(
                &person_id,
                None,
                Outcome::Skipped,
                &format!("{other} is not a person event"),
            )),
        }
    }

    /// Whether Twenty deleted the person, while linked, after the version `record` carries.
    pub async fn deleted_since(
        &self,
        connection: &mut AsyncPgConnection,
        person_id: &str,
        record: &Json,
    ) -> QueryResult<bool> {
        Ok(records::deleted_version(connection, person_id)
            .await?
            .is_some_and(|deleted| self.version(record) <= deleted))
    }

    /// The person version the event carries.
    fn version(&self, record: &Json) -> DateTime<Utc> {
        updated_at(record).unwrap_or(self.signed_at)
    }

    /// The person version a delete carries: when it was deleted, or its last update when that
    /// is later.
    fn deleted_version(&self, record: &Json) -> DateTime<Utc> {
        time_field(record, "deletedAt")
            .into_iter()
            .chain(updated_at(record))
            .max()
            .unwrap_or(self.signed_at)
    }

    async fn linked(
        &self,
        connection: &mut AsyncPgConnection,
        person_id: &str,
        record: &Json,
        link: SyncRow,
    ) -> Result<TwentyWebhookResult, ServiceError> {
        let version = self.version(record);
        let contact_id = link.contact_id;
        if link.remote_updated_at.is_some_and(|seen| version <= seen) {
            return Ok(result(
                person_id,
                Some(contact_id),
                Outcome::Stale,
                "an equal or newer version of this person was already applied",
            ));
        }
        let Some(contact) = contacts::lock_by_id(connection, contact_id).await? else {
            return Ok(result(
                person_id,
                None,
                Outcome::Skipped,
                "the contact no longer exists",
            ));
        };
        if self.local_change_wins(&contact, Some(&link), version) {
            return Ok(result(
                person_id,
                Some(contact_id),
                Outcome::Stale,
                "the contact has a newer local change, which will be written to Twenty",
            ));
        }
        let upsert = match self.upsert(record, Some(&contact.phone_number)) {
            Ok(upsert) => upsert,
            Err(reason) => {
                return Ok(result(
                    person_id,
                    Some(contact_id),
                    Outcome::Skipped,
                    &reason,
                ));
            }
        };
        match update_by_id_on(connection, self.context, self.audience, contact_id, &upsert).await {
            Ok(_) => {}
            // Refused before anything is written (its savepoint rolled back): the call's other
            // records still apply, as they do past a record whose values are not valid.
            Err(ContactError::Invalid(violations)) => {
                return Ok(result(
                    person_id,
                    Some(contact_id),
                    Outcome::Skipped,
                    &not_valid(&violations),
                ));
            }
            Err(ContactError::Db(db::DbError::UniqueViolation { .. })) => {
                return Ok(result(
                    person_id,
                    Some(contact_id),
                    Outcome::Skipped,
                    "another contact has this phone number or external reference id",
                ));
            }
            Err(error) => return Err(error.into()),
        }
        self.link(connection, contact_id, person_id, record, version)
            .await?;
        Ok(result(person_id, Some(contact_id), Outcome::Applied, ""))
    }

    /// Links the person to the contact with its phone number (created when there is none) and
    /// applies its values unless the contact's own are newer. The flag says a contact was created.
    pub async fn unlinked(
        &self,
        connection: &mut AsyncPgConnection,
        person_id: &str,
        record: &Json,
    ) -> Result<(TwentyWebhookResult, bool), ServiceError> {
        let version = self.version(record);
        let upsert = match self.upsert(record, None) {
            Ok(upsert) => upsert,
            Err(reason) => return Ok((result(person_id, None, Outcome::Skipped, &reason), false)),
        };
        // The contact the upsert would address: the one with the phone number, else (changing
        // its phone) the one with the person's external reference id.
        let mut found = contacts::find_by_phone(connection, upsert.phone_number.as_str())
            .await
            .optional()?
            .map(|contact| (contact, "phone number"));
        if found.is_none()
            && let Some(reference) = upsert.external_reference_id.as_deref()
        {
            found = contacts::find_by_reference(connection, reference)
                .await
                .optional()?
                .map(|contact| (contact, "external reference id"));
        }
        if let Some((contact, found_by)) = &found {
            let link = records::find(connection, contact.id).await?;
            // One linked to another person is not this person's to take (two people sharing a
            // reference would take it in turns).
            if let Some(other) = link.as_ref().and_then(|link| link.person_id.as_deref()) {
                return Ok((
                    result(
                        person_id,
                        Some(contact.id),
                        Outcome::Skipped,
                        &format!("the contact with this {found_by} is linked to person {other}"),
                    ),
                    false,
                ));
            }
            if self.local_change_wins(contact, link.as_ref(), version) {
                // Link now; the contact's newer values go to Twenty with the next sync.
                self.first_link_keeping_twentys(connection, contact, person_id, record, version)
                    .await?;
                records::mark_pending(connection, contact.id, self.now).await?;
                queue_sync(connection, contact.id).await?;
                return Ok((
                    result(
                        person_id,
                        Some(contact.id),
                        Outcome::Stale,
                        "linked; the contact has a newer local change, which will be written to Twenty",
                    ),
                    false,
                ));
            }
        }
        let (contact, created) = match upsert_on(connection, self.context, self.audience, &upsert)
            .await
        {
            Ok(outcome) => (outcome.contact, outcome.operation == Operation::Created),
            // As in `linked`: this record is skipped, not the call or the backfill's page.
            Err(ContactError::Invalid(violations)) => {
                let contact_id = found.as_ref().map(|(contact, _)| contact.id);
                return Ok((
                    result(
                        person_id,
                        contact_id,
                        Outcome::Skipped,
                        &not_valid(&violations),
                    ),
                    false,
                ));
            }
            Err(ContactError::IdentityConflict { .. }) => {
                return Ok((
                    result(
                        person_id,
                        None,
                        Outcome::Skipped,
                        "the phone number and the external reference id belong to different contacts",
                    ),
                    false,
                ));
            }
            Err(error) => return Err(error.into()),
        };
        self.link(connection, contact.id, person_id, record, version)
            .await?;
        Ok((
            result(person_id, Some(contact.id), Outcome::Applied, ""),
            created,
        ))
    }

    /// Whether the contact holds local changes Twenty does not have, made after `version`.
    fn local_change_wins(
        &self,
        contact: &ContactRow,
        link: Option<&SyncRow>,
        version: DateTime<Utc>,
    ) -> bool {
        let outbound = values_json(self.mapping.outbound_values(contact));
        let unsynced = link.is_none_or(|link| link.synced_values != outbound);
        unsynced && contact.updated_at > version
    }

    /// The record's mapped values as a validated upsert that keeps the subscriber status.
    fn upsert(&self, record: &Json, current_phone: Option<&str>) -> Result<ContactUpsert, String> {
        let request = self
            .mapping
            .contact_request(record, current_phone)
            .ok_or_else(|| "the person has no phone number, which a contact needs".to_owned())?;
        let mut upsert = validate_upsert(request, self.default_region)
            .map_err(|violations| not_valid(&violations))?;
        upsert.subscriber_status = None;
        Ok(upsert)
    }

    async fn link(
        &self,
        connection: &mut AsyncPgConnection,
        contact_id: Uuid,
        person_id: &str,
        record: &Json,
        version: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        let holds = values_json(self.mapping.twenty_holds(record));
        records::record_synced(
            connection,
            contact_id,
            person_id,
            &holds,
            Some(version),
            self.now,
        )
        .await?;
        Ok(())
    }
    /// Links a contact whose newer local change wins to the person, recording as Twenty's the
    /// contact's own blanks: its next sync writes its newer values but never a blank over what
    /// the CRM holds of the person (a contact a trigger created knows only its phone), as a
    /// first link by phone from this side does.
    async fn first_link_keeping_twentys(
        &self,
        connection: &mut AsyncPgConnection,
        contact: &ContactRow,
        person_id: &str,
        record: &Json,
        version: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        records::record_synced(
            connection,
            contact.id,
            person_id,
            &values_json(self.mapping.known_of(record, contact)),
            Some(version),
            self.now,
        )
        .await?;
        Ok(())
    }
}

/// Why a record whose values a contact cannot take (not valid, or past a contact's limits once
/// merged with what it holds) is skipped.
fn not_valid(violations: &[FieldViolation]) -> String {
    let problems: Vec<String> = violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect();
    format!(
        "Twenty's values are not valid for a contact: {}",
        problems.join("; ")
    )
}

pub(super) fn result(
    person_id: &str,
    contact_id: Option<Uuid>,
    outcome: Outcome,
    reason: &str,
) -> TwentyWebhookResult {
    TwentyWebhookResult {
        person_id: person_id.to_owned(),
        contact_id: contact_id.map(|id| id.to_string()).unwrap_or_default(),
        outcome: outcome.into(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_payload_shapes_are_read() {
        let single = parse(br#"{"eventName":"person.updated","record":{"id":"p1"}}"#).unwrap();
        assert_eq!(single.len(), 1);
        let batched = parse(
            br#"{"eventName":"person.created","batchSize":2,"items":[{"record":{"id":"a"}},{"record":{"id":"b"}}]}"#,
        )
        .unwrap();
        assert_eq!(batched.len(), 2);
        assert_eq!(batched[1].record["id"], "b");
        assert_eq!(parse(b"[]").unwrap_err().field, "body");
        assert_eq!(parse(br#"{"record":{}}"#).unwrap_err().field, "eventName");
        assert_eq!(
            parse(br#"{"eventName":"person.created","items":[{"record":1}]}"#)
                .unwrap_err()
                .field,
            "items[0].record"
        );
    }
}
