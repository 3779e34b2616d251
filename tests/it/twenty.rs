//! Twenty CRM sync (SPEC §5) against a fake Twenty on loopback: connection and access, default
//! and custom mappings both ways, linking by stored id and by phone, 429 retried, 400 failing the
//! record until retried, signed webhooks (good, bad, stale, replayed), echo suppression, the
//! conflict rule, deletion, multi-page backfill and `crm.twenty.sync_failed`.

use chrono::{Duration as TimeDelta, SecondsFormat, Utc};
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value as Json, json};
use switchbord_api::json::json_from_struct;
use switchbord_api::v1::{GetContactRequest, get_contact_request};

use crate::helpers::fake_twenty::{Failure, FakeTwenty, twenty_signature_headers};
use crate::helpers::{
    HttpReply, TestApp, count, eventually, lock_table, until_config_listened, until_dispatched,
    until_statements_wait_for_a_lock,
};

const API_KEY: &str = "twenty-api-key-0123456789abcdef";
const SECRET: &str = "twenty-webhook-secret-value";
const BASE: &str = "/api/v1/integrations/twenty";

async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Json>,
) -> HttpReply {
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    app.send(
        method,
        path,
        &[("x-api-key", key), ("content-type", "application/json")],
        body,
    )
    .await
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Json>) -> HttpReply {
    call(app, &app.keys.admin, method, path, body).await
}

/// A running app connected to a fresh fake Twenty.
async fn connected() -> (TestApp, FakeTwenty) {
    connected_app(TestApp::spawn().await).await
}

async fn connected_app(app: TestApp) -> (TestApp, FakeTwenty) {
    let fake = FakeTwenty::start(API_KEY).await;
    connect(&app, &fake).await;
    (app, fake)
}

async fn sync_of(app: &TestApp, contact_id: &str) -> Json {
    let reply = admin(
        app,
        Method::GET,
        &format!("{BASE}/sync/contacts/{contact_id}"),
        None,
    )
    .await;
    if reply.status == 404 {
        return Json::Null;
    }
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body
}

async fn wait_for_status(app: &TestApp, contact_id: &str, status: &str) -> Json {
    let mut last = Json::Null;
    eventually(&format!("sync status {status}"), async || {
        last = sync_of(app, contact_id).await;
        last["status"] == status
    })
    .await;
    last
}

/// Waits until the outbox has nothing left to do, so that "nothing was sent" can be asserted.
async fn settled(app: &TestApp) {
    eventually("the outbox to settle", async || {
        count(
            &app.database,
            "SELECT count(*) AS count FROM outbox_jobs WHERE status IN ('pending', 'running')",
        )
        .await
            == 0
    })
    .await;
}

/// Waits until the backfill has completed; answers its state as `…/sync/health` shows it.
async fn until_backfill_completes(app: &TestApp) -> Json {
    let mut backfill = Json::Null;
    eventually("the backfill completes", async || {
        backfill = admin(app, Method::GET, &format!("{BASE}/sync/health"), None)
            .await
            .body["backfill"]
            .clone();
        backfill["status"] == "completed"
    })
    .await;
    backfill
}

fn timestamp(time: chrono::DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn webhook_body(event_name: &str, record: &Json) -> String {
    json!({
        "targetUrl": "https://switchbord.example/api/v0/webhooks/incoming/twenty",
        "eventName": event_name,
        "objectMetadata": {"id": "0d6e0a3c-0000-4000-8000-000000000001", "nameSingular": "person"},
        "workspaceId": "20202020-0000-4000-8000-000000000000",
        "webhookId": "20202020-0000-4000-8000-000000000001",
        "eventDate": timestamp(Utc::now()),
        "record": record,
        "updatedFields": ["name"],
    })
    .to_string()
}

async fn post_signed(
    app: &TestApp,
    body: &str,
    secret: &str,
    at_ms: i64,
    nonce: &str,
) -> HttpReply {
    let headers = twenty_signature_headers(secret, at_ms, nonce, body);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    app.send_anonymous(
        Method::POST,
        "/api/v0/webhooks/incoming/twenty",
        &headers,
        body.to_owned(),
    )
    .await
}

async fn send_webhook(app: &TestApp, event_name: &str, record: &Json) -> HttpReply {
    let body = webhook_body(event_name, record);
    let nonce = uuid::Uuid::new_v4().to_string();
    post_signed(app, &body, SECRET, Utc::now().timestamp_millis(), &nonce).await
}

fn person_record(id: &str, first: &str, last: &str, email: &str, national: &str) -> Json {
    json!({
        "id": id,
        "name": {"firstName": first, "lastName": last},
        "emails": {"primaryEmail": email, "additionalEmails": null},
        "phones": {
            "primaryPhoneNumber": national,
            "primaryPhoneCountryCode": "DE",
            "primaryPhoneCallingCode": "+49",
            "additionalPhones": null,
        },
        "jobTitle": "",
        "city": "Berlin",
        "createdAt": timestamp(Utc::now() - TimeDelta::minutes(1)),
        "updatedAt": timestamp(Utc::now()),
        "deletedAt": null,
    })
}

async fn contact_by_phone(app: &TestApp, phone: &str) -> Json {
    let mut client = app.contacts_client().await;
    let contact = client
        .get_contact(GetContactRequest {
            lookup: Some(get_contact_request::Lookup::PhoneNumber(phone.to_owned())),
        })
        .await
        .expect("contact exists")
        .into_inner()
        .contact
        .expect("contact");
    json!({
        "id": contact.id,
        "name": contact.name,
        "email": contact.email,
        "phone_number": contact.phone_number,
        "locale": contact.locale,
        "tags": contact.tags,
        "properties": json_from_struct(contact.properties.unwrap_or_default()),
    })
}

#[tokio::test]
async fn the_connection_is_admin_only_masks_its_secrets_and_can_be_tested() {
    let app = TestApp::spawn().await;
    let fake = FakeTwenty::start(API_KEY).await;
    let path = format!("{BASE}/connection");

    let missing_key = admin(
        &app,
        Method::PUT,
        &path,
        Some(json!({"base_url": fake.url()})),
    )
    .await;
    assert_eq!(missing_key.status, 400, "{}", missing_key.text);
    assert!(missing_key.text.contains("api_key"), "{}", missing_key.text);

    let manager = call(
        &app,
        &app.keys.manager,
        Method::PUT,
        &path,
        Some(json!({"base_url": fake.url(), "api_key": API_KEY})),
    )
    .await;
    assert_eq!(manager.status, 403);

    let set = admin(
        &app,
        Method::PUT,
        &path,
        Some(json!({"base_url": fake.url(), "api_key": API_KEY, "webhook_secret": SECRET})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert!(!set.text.contains(API_KEY) && !set.text.contains(SECRET));
    assert_eq!(set.body["api_key_hint"], "…cdef");
    assert_eq!(set.body["webhook_secret_set"], true);

    let tested = admin(&app, Method::POST, &format!("{path}/test"), None).await;
    assert_eq!(tested.status, 200, "{}", tested.text);
    assert_eq!(tested.body["reachable"], true);
    assert_eq!(tested.body["authenticated"], true);

    // Changing only the key keeps the webhook secret.
    let rekeyed = admin(
        &app,
        Method::PUT,
        &path,
        Some(json!({"base_url": fake.url(), "api_key": "a-wrong-key-for-twenty"})),
    )
    .await;
    assert_eq!(rekeyed.body["webhook_secret_set"], true);
    let tested = admin(&app, Method::POST, &format!("{path}/test"), None).await;
    assert_eq!(tested.body["reachable"], true);
    assert_eq!(tested.body["authenticated"], false);
    assert_eq!(tested.body["status_code"], 401);

    // The stored key follows a new base URL on the same origin, and never to another one.
    let elsewhere = admin(
        &app,
        Method::PUT,
        &path,
        Some(json!({"base_url": "http://127.0.0.1:1"})),
    )
    .await;
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.text);
    assert_eq!(
        elsewhere.body["details"][0]["field"], "api_key",
        "{}",
        elsewhere.text
    );
    let same_origin = admin(
        &app,
        Method::PUT,
        &path,
        Some(json!({"base_url": format!("{}/", fake.url())})),
    )
    .await;
    assert_eq!(same_origin.status, 200, "{}", same_origin.text);
    assert_eq!(same_origin.body["api_key_hint"], "…enty");
    // A short key gets no hint: four characters would be half of it.
    let short_key = admin(
        &app,
        Method::PUT,
        &path,
        Some(json!({"base_url": fake.url(), "api_key": "k3y-1234"})),
    )
    .await;
    assert_eq!(short_key.status, 200, "{}", short_key.text);
    assert_eq!(short_key.body["api_key_hint"], "…");

    let read = call(&app, &app.keys.manager, Method::GET, &path, None).await;
    assert_eq!(read.status, 403);
    let deleted = admin(&app, Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(admin(&app, Method::GET, &path, None).await.status, 404);
    let deleted_again = admin(&app, Method::DELETE, &path, None).await;
    assert_eq!(deleted_again.status, 404);

    // Only the changes that were made, with the names of the fields they set.
    assert_eq!(
        crate::helpers::audit_trail(&app.database, "'twenty'").await,
        [
            "twenty.connection.set base_url,api_key,webhook_secret",
            "twenty.connection.set base_url,api_key",
            "twenty.connection.set base_url",
            "twenty.connection.set base_url,api_key",
            "twenty.connection.delete",
        ]
    );
}

#[tokio::test]
async fn a_new_contact_creates_a_person_and_later_changes_patch_only_what_changed() {
    let (app, fake) = connected().await;
    let created = app
        .upsert_contact(&json!({
            "phone_number": "+4915112345678",
            "external_reference_id": "crm-7",
            "tags": ["vip", "beta"],
            "person_properties": {"name": "Mary Ann Smith", "email": "mary@example.com", "locale": "de-DE"},
        }))
        .await;
    let contact_id = created["contact"]["id"]
        .as_str()
        .expect("contact id")
        .to_owned();
    let synced = wait_for_status(&app, &contact_id, "synced").await;

    let people = fake.people();
    assert_eq!(people.len(), 1);
    let person = &people[0];
    assert_eq!(synced["person_id"], person["id"]);
    assert_eq!(
        person["name"],
        json!({"firstName": "Mary", "lastName": "Ann Smith"})
    );
    assert_eq!(person["emails"]["primaryEmail"], "mary@example.com");
    assert_eq!(person["phones"]["primaryPhoneNumber"], "15112345678");
    assert_eq!(person["phones"]["primaryPhoneCallingCode"], "+49");
    assert_eq!(person["phones"]["primaryPhoneCountryCode"], "DE");
    assert_eq!(person["externalReferenceId"], "crm-7");
    assert_eq!(person["locale"], "de-DE");
    assert_eq!(person["tags"], json!(["beta", "vip"]));

    app.upsert_contact(&json!({
        "phone_number": "+4915112345678",
        "person_properties": {"email": "mary.smith@example.com"},
    }))
    .await;
    eventually("the email reaches Twenty", async || {
        fake.people()[0]["emails"]["primaryEmail"] == "mary.smith@example.com"
    })
    .await;
    settled(&app).await;
    let writes = fake.writes();
    assert_eq!(fake.people().len(), 1, "the same person is updated");
    let patch = writes.last().expect("a PATCH");
    assert_eq!(patch.method, Method::PATCH);
    assert_eq!(
        patch.path,
        format!("/rest/people/{}", person["id"].as_str().unwrap())
    );
    assert_eq!(
        patch.body,
        json!({"emails": {"primaryEmail": "mary.smith@example.com"}})
    );
}

#[tokio::test]
async fn an_existing_person_with_the_same_phone_number_is_linked_not_duplicated() {
    let (app, fake) = connected().await;
    let existing = fake.insert_person(json!({
        "name": {"firstName": "Jo", "lastName": "Beck"},
        "emails": {"primaryEmail": "jo@example.com"},
        "phones": {"primaryPhoneNumber": "15112345679", "primaryPhoneCallingCode": "+49", "primaryPhoneCountryCode": "DE"},
    }));
    let created = app
        .upsert_contact(&json!({"phone_number": "+49 151 12345679", "person_properties": {"name": "Jo Beck", "email": "jo@example.com", "plan": "gold"}}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    let synced = wait_for_status(&app, &contact_id, "synced").await;
    assert_eq!(synced["person_id"], existing["id"]);
    assert_eq!(fake.people().len(), 1);
    assert!(
        fake.writes()
            .iter()
            .all(|write| write.method != Method::POST),
        "no person was created"
    );
    let lookups: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|request| request.query.contains("filter="))
        .collect();
    assert!(
        lookups[0].query.contains(
            "phones.primaryPhoneNumber[in]:[\"15112345679\",\"+4915112345679\",\"015112345679\"]"
        ),
        "{:?}",
        lookups[0]
    );
}

#[tokio::test]
async fn a_person_found_by_phone_and_deleted_before_its_update_is_replaced_by_a_new_one() {
    let (app, fake) = connected().await;
    let found = fake.insert_person(json!({
        "name": {"firstName": "Gone", "lastName": "Soon"},
        "phones": {"primaryPhoneNumber": "15112340093", "primaryPhoneCallingCode": "+49"},
    }));
    // The lookup finds it; it is deleted before the update that follows.
    fake.fail_next(Failure::Pass);
    fake.fail_next(Failure::DeletedFirst);
    let created = app
        .upsert_contact(
            &json!({"phone_number": "+4915112340093", "person_properties": {"name": "New Name"}}),
        )
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();

    let synced = wait_for_status(&app, &contact_id, "synced").await;
    assert_ne!(synced["person_id"], found["id"]);
    let people = fake.people();
    assert_eq!(people.len(), 1, "{people:?}");
    assert_eq!(synced["person_id"], people[0]["id"]);
    assert_eq!(people[0]["name"]["firstName"], "New");
}

#[tokio::test]
async fn a_404_that_is_not_twentys_is_retried_and_keeps_the_link() {
    let (app, fake) = connected().await;
    let created = app
        .upsert_contact(
            &json!({"phone_number": "+4915112340094", "person_properties": {"name": "Kept Link"}}),
        )
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    let person_id = wait_for_status(&app, &contact_id, "synced").await["person_id"].clone();
    assert!(person_id.is_string());

    // A reverse proxy answers the update with its own 404 page while Twenty is deployed.
    fake.fail_next(Failure::ProxyNotFound);
    app.upsert_contact(&json!({
        "phone_number": "+4915112340094",
        "person_properties": {"email": "kept@example.com"},
    }))
    .await;

    eventually("the retried update reaches Twenty", async || {
        fake.people()[0]["emails"]["primaryEmail"] == "kept@example.com"
    })
    .await;
    let synced = wait_for_status(&app, &contact_id, "synced").await;
    assert_eq!(synced["person_id"], person_id, "still linked: {synced}");
    assert_eq!(fake.people().len(), 1);
}

#[tokio::test]
async fn syncs_left_pending_while_disconnected_run_when_twenty_is_connected_again() {
    let (app, fake) = connected().await;
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340095", "person_properties": {"name": "Re Connected"}}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "synced").await;

    let deleted = admin(&app, Method::DELETE, &format!("{BASE}/connection"), None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    // A sync job that ran meanwhile found no connection and ended, leaving its contact
    // pending with no job to come.
    execute(&app, "UPDATE twenty_contact_syncs SET status = 'pending'").await;

    connect(&app, &fake).await;
    wait_for_status(&app, &contact_id, "synced").await;
}

#[tokio::test]
async fn a_linked_contact_changed_while_disconnected_is_synced_when_twenty_is_connected_again() {
    let (app, fake) = connected().await;
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340096", "person_properties": {"name": "Away While", "email": "before@example.com"}}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "synced").await;
    let person_id = sync_of(&app, &contact_id).await["person_id"].clone();

    let deleted = admin(&app, Method::DELETE, &format!("{BASE}/connection"), None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    app.upsert_contact(&json!({"phone_number": "+4915112340096", "person_properties": {"email": "after@example.com"}}))
        .await;
    settled(&app).await;

    connect(&app, &fake).await;
    eventually("the change made meanwhile reaches Twenty", async || {
        fake.writes().iter().any(|write| {
            write.path == format!("/rest/people/{}", person_id.as_str().unwrap_or_default())
                && write.body == json!({"emails": {"primaryEmail": "after@example.com"}})
        })
    })
    .await;
    wait_for_status(&app, &contact_id, "synced").await;
}

#[tokio::test]
async fn a_connection_moved_to_another_twenty_forgets_the_old_ones_people() {
    let (app, old_twenty) = connected().await;
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340097", "person_properties": {"name": "Moved Along"}}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    let old_person = wait_for_status(&app, &contact_id, "synced").await["person_id"].clone();
    assert!(old_person.as_str().is_some_and(|id| !id.is_empty()));

    let new_twenty = FakeTwenty::start(API_KEY).await;
    connect(&app, &new_twenty).await;
    assert_eq!(sync_of(&app, &contact_id).await, Json::Null, "no link kept");

    // Its next change creates the person in the new Twenty, rather than patch the old one's
    // id there (a 404 that would unlink it).
    app.upsert_contact(&json!({"phone_number": "+4915112340097", "person_properties": {"email": "moved@example.com"}}))
        .await;
    let synced = wait_for_status(&app, &contact_id, "synced").await;
    assert_ne!(synced["person_id"], old_person);
    assert_eq!(new_twenty.people().len(), 1);
    assert_eq!(
        new_twenty.people()[0]["emails"]["primaryEmail"],
        "moved@example.com"
    );
    assert_eq!(old_twenty.people().len(), 1, "the old Twenty is left alone");

    // Deleted, then connected to yet another Twenty: its links are forgotten too, not synced
    // as changed meanwhile to ids the other one does not know.
    let deleted = admin(&app, Method::DELETE, &format!("{BASE}/connection"), None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    app.upsert_contact(&json!({"phone_number": "+4915112340097", "person_properties": {"email": "third@example.com"}}))
        .await;
    settled(&app).await;
    let third_twenty = FakeTwenty::start(API_KEY).await;
    connect(&app, &third_twenty).await;
    assert_eq!(sync_of(&app, &contact_id).await, Json::Null, "no link kept");
    settled(&app).await;
    assert!(
        third_twenty.writes().is_empty(),
        "{:?}",
        third_twenty.writes()
    );
}

#[tokio::test]
async fn a_contact_that_changes_while_first_linked_by_phone_never_writes_its_blanks() {
    let (app, fake) = connected().await;
    let person = fake.insert_person(json!({
        "name": {"firstName": "Kept", "lastName": "Name"},
        "phones": {"primaryPhoneNumber": "15112340098", "primaryPhoneCallingCode": "+49"},
    }));
    fake.slow_down(std::time::Duration::from_millis(500));
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340098"}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    // While the lookup that finds the person is on its way, the contact changes.
    eventually("the lookup is on its way", async || fake.arrivals() == 1).await;
    app.upsert_contact(&json!({
        "phone_number": "+4915112340098",
        "person_properties": {"email": "kept@example.com"},
    }))
    .await;
    fake.slow_down(std::time::Duration::ZERO);

    eventually("the email reaches Twenty", async || {
        fake.people()[0]["emails"]["primaryEmail"] == "kept@example.com"
    })
    .await;
    let synced = wait_for_status(&app, &contact_id, "synced").await;
    assert_eq!(synced["person_id"], person["id"]);
    assert_eq!(
        fake.people()[0]["name"],
        json!({"firstName": "Kept", "lastName": "Name"})
    );
}

#[tokio::test]
async fn a_person_created_while_its_contact_changed_is_kept_not_created_twice() {
    let (app, fake) = connected().await;
    fake.slow_down(std::time::Duration::from_millis(500));
    let created = app
        .upsert_contact(
            &json!({"phone_number": "+4915112340096", "external_reference_id": "crm-moving"}),
        )
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    // The lookup by phone, then the create; while the create is on its way, the contact's
    // phone number changes (found by its reference).
    eventually("the create is on its way", async || fake.arrivals() == 2).await;
    app.upsert_contact(
        &json!({"phone_number": "+4915112340097", "external_reference_id": "crm-moving"}),
    )
    .await;
    fake.slow_down(std::time::Duration::ZERO);

    eventually("the person has the new number", async || {
        fake.people()
            .iter()
            .any(|person| person["phones"]["primaryPhoneNumber"] == "15112340097")
    })
    .await;
    let synced = wait_for_status(&app, &contact_id, "synced").await;
    let people = fake.people();
    assert_eq!(people.len(), 1, "one person: {people:?}");
    assert_eq!(synced["person_id"], people[0]["id"]);
}

#[tokio::test]
async fn people_imported_with_the_whole_number_or_a_trunk_prefix_are_linked_not_duplicated() {
    let (app, fake) = connected().await;
    let whole = fake.insert_person(json!({
        "name": {"firstName": "Whole", "lastName": "Number"},
        "phones": {"primaryPhoneNumber": "+4915112340090", "primaryPhoneCallingCode": ""},
    }));
    let trunk = fake.insert_person(json!({
        "name": {"firstName": "Trunk", "lastName": "Prefix"},
        "phones": {"primaryPhoneNumber": "015112340091", "primaryPhoneCallingCode": "+49"},
    }));
    // The same national number under another country's code is another number; so is a
    // German landline's trunk spelling without a code, for a number of a region whose trunk
    // prefix is not 0 (+1 202 555 0123).
    fake.insert_person(json!({
        "name": {"firstName": "Other", "lastName": "Country"},
        "phones": {"primaryPhoneNumber": "015112340092", "primaryPhoneCallingCode": "+43"},
    }));
    fake.insert_person(json!({
        "name": {"firstName": "Wuppertal", "lastName": "Landline"},
        "phones": {"primaryPhoneNumber": "02025550123", "primaryPhoneCallingCode": ""},
    }));
    for (phone, person) in [("+4915112340090", &whole), ("+4915112340091", &trunk)] {
        let created = app.upsert_contact(&json!({"phone_number": phone})).await;
        let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
        let synced = wait_for_status(&app, &contact_id, "synced").await;
        assert_eq!(synced["person_id"], person["id"], "{phone}");
    }
    assert!(
        fake.writes()
            .iter()
            .all(|write| write.method != Method::POST),
        "no person was created"
    );
    // The contacts knew only their phone numbers: what the CRM knew of the people stays.
    let names: Vec<Json> = fake
        .people()
        .iter()
        .filter(|person| person["id"] == whole["id"] || person["id"] == trunk["id"])
        .map(|person| person["name"].clone())
        .collect();
    assert_eq!(
        names,
        [
            json!({"firstName": "Whole", "lastName": "Number"}),
            json!({"firstName": "Trunk", "lastName": "Prefix"})
        ]
    );
    // Nor does the contact's next change send its blanks.
    app.upsert_contact(&json!({
        "phone_number": "+4915112340090",
        "person_properties": {"email": "whole@example.com"},
    }))
    .await;
    eventually("the email reaches Twenty", async || {
        fake.people().iter().any(|person| {
            person["id"] == whole["id"] && person["emails"]["primaryEmail"] == "whole@example.com"
        })
    })
    .await;
    let whole_now = fake
        .people()
        .into_iter()
        .find(|person| person["id"] == whole["id"])
        .expect("the person");
    assert_eq!(
        whole_now["name"],
        json!({"firstName": "Whole", "lastName": "Number"})
    );

    for phone in ["+4915112340092", "+12025550123"] {
        let created = app.upsert_contact(&json!({"phone_number": phone})).await;
        let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
        wait_for_status(&app, &contact_id, "synced").await;
    }
    assert_eq!(fake.people().len(), 6, "a person for each of the last two");
}

#[tokio::test]
async fn a_person_sharing_a_linked_contacts_reference_does_not_take_it_over() {
    let (app, _fake) = connected().await;
    let first = "7b0c2b9e-0000-4000-8000-0000000000e1";
    let mut holder = person_record(first, "First", "Holder", "first@example.com", "15112340101");
    holder["externalReferenceId"] = json!("crm-shared");
    send_webhook(&app, "person.created", &holder).await;
    let contact = contact_by_phone(&app, "+4915112340101").await;
    let contact_id = contact["id"].as_str().unwrap().to_owned();
    assert_eq!(sync_of(&app, &contact_id).await["person_id"], first);

    // A duplicate in Twenty with the same reference and another phone number.
    let second = "7b0c2b9e-0000-4000-8000-0000000000e2";
    let mut duplicate = person_record(
        second,
        "Second",
        "Holder",
        "second@example.com",
        "15112340102",
    );
    duplicate["externalReferenceId"] = json!("crm-shared");
    let reply = send_webhook(&app, "person.created", &duplicate).await;

    assert_eq!(
        reply.body["results"][0]["outcome"], "skipped",
        "{}",
        reply.text
    );
    assert!(
        reply.body["results"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(first),
        "{}",
        reply.text
    );
    assert_eq!(sync_of(&app, &contact_id).await["person_id"], first);
    let still = contact_by_phone(&app, "+4915112340101").await;
    assert_eq!(still["id"], contact_id, "the contact kept its phone number");
    assert_eq!(still["name"], "First Holder");
}

#[tokio::test]
async fn a_custom_mapping_is_validated_and_syncs_chosen_properties() {
    let (app, fake) = connected().await;
    let path = format!("{BASE}/mapping");
    let defaults = admin(&app, Method::GET, &path, None).await;
    assert_eq!(defaults.body["entries"].as_array().unwrap().len(), 6);

    let two_sources = admin(
        &app,
        Method::PATCH,
        &path,
        Some(json!({"entries": [{"contact_field": "properties.plan", "twenty_field": "locale", "direction": "to_twenty"}]})),
    )
    .await;
    assert_eq!(two_sources.status, 400, "{}", two_sources.text);
    assert!(
        two_sources.text.contains("locale is already written"),
        "{}",
        two_sources.text
    );

    let unknown = admin(
        &app,
        Method::PATCH,
        &path,
        Some(json!({"entries": [{"contact_field": "nickname", "twenty_field": "emails.other", "direction": "sideways"}]})),
    )
    .await;
    assert_eq!(unknown.status, 400);
    for field in [
        "entries[0].contact_field",
        "entries[0].twenty_field",
        "entries[0].direction",
    ] {
        assert!(unknown.text.contains(field), "{field} in {}", unknown.text);
    }

    let updated = admin(
        &app,
        Method::PATCH,
        &path,
        Some(json!({
            "entries": [
                {"contact_field": "properties.plan", "twenty_field": "plan", "direction": "both"},
                {"contact_field": "locale", "twenty_field": "locale", "direction": "none"},
            ],
            "remove_contact_fields": ["tags"],
        })),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let entries = updated.body["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(
            |entry| entry["contact_field"] == "properties.plan" && entry["direction"] == "both"
        )
    );
    assert!(entries.iter().all(|entry| entry["contact_field"] != "tags"));

    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340001", "tags": ["x"], "person_properties": {"plan": "gold", "locale": "en-GB", "name": "Ann"}}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "synced").await;
    let person = &fake.people()[0];
    assert_eq!(person["plan"], "gold");
    assert!(
        person.get("locale").is_none(),
        "locale is not mapped: {person}"
    );
    assert!(
        person.get("tags").is_none(),
        "tags are not mapped: {person}"
    );

    // From Twenty, the custom field comes back into the property.
    let mut record = person.clone();
    record["plan"] = json!("platinum");
    record["updatedAt"] = json!(timestamp(Utc::now() + TimeDelta::seconds(5)));
    let reply = send_webhook(&app, "person.updated", &record).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "applied",
        "{}",
        reply.text
    );
    let contact = contact_by_phone(&app, "+4915112340001").await;
    assert_eq!(contact["properties"]["plan"], "platinum");

    let reset = admin(
        &app,
        Method::PATCH,
        &path,
        Some(json!({"reset_to_default": true})),
    )
    .await;
    assert_eq!(reset.body["entries"].as_array().unwrap().len(), 6);
    // The refused updates changed nothing and are not in the audit trail.
    let changes = crate::helpers::audit_trail(&app.database, "'twenty'").await;
    assert_eq!(
        changes[1..],
        [
            "twenty.mapping.update mapping",
            "twenty.mapping.update mapping"
        ]
    );
}

#[tokio::test]
async fn a_rate_limited_sync_is_retried_after_the_requested_delay() {
    let (app, fake) = connected().await;
    fake.fail_next(Failure::RateLimited {
        retry_after_secs: 1,
    });
    let created = app
        .upsert_contact(
            &json!({"phone_number": "+4915112340002", "person_properties": {"name": "Rae Limit"}}),
        )
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "synced").await;
    assert_eq!(fake.people().len(), 1);
    // The first call was refused with 429 and retried, not dropped.
    assert!(fake.requests().len() >= 3, "{:?}", fake.requests());
}

#[tokio::test]
async fn an_oversized_answer_fails_the_sync_without_being_read_whole() {
    let (app, fake) = connected().await;
    fake.fail_next(Failure::Oversized);
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340005"}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    let failed = wait_for_status(&app, &contact_id, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("the answer is larger than 4 MiB"),
        "{failed}"
    );
}

#[tokio::test]
async fn an_unreachable_twenty_is_retried_and_its_error_keeps_the_phone_number_out() {
    let app = TestApp::spawn().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let reply = admin(
        &app,
        Method::PUT,
        &format!("{BASE}/connection"),
        Some(json!({"base_url": format!("http://{closed}"), "api_key": API_KEY, "webhook_secret": SECRET})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340006"}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    let mut record = Json::Null;
    eventually("the failed attempt is recorded", async || {
        record = sync_of(&app, &contact_id).await;
        record["last_error"].is_string()
    })
    .await;
    assert_eq!(record["status"], "pending", "{record}");
    let error = record["last_error"].as_str().unwrap();
    assert!(error.starts_with("Twenty is unreachable"), "{error}");
    // The lookup's URL carries the number in its query; the error must not.
    assert!(!error.contains("5112340006"), "{error}");
}

#[tokio::test]
async fn a_server_error_is_retried() {
    let (app, fake) = connected().await;
    fake.fail_next(Failure::ServerError);
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340003"}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "synced").await;
    assert_eq!(fake.people().len(), 1);
}

#[tokio::test]
async fn a_validation_error_fails_the_record_until_the_cause_is_fixed_and_it_is_retried() {
    let (app, fake) = connected().await;
    fake.refuse_field("locale");
    let created = app
        .upsert_contact(
            &json!({"phone_number": "+4915112340004", "person_properties": {"locale": "de-DE"}}),
        )
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    let failed = wait_for_status(&app, &contact_id, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("Object person doesn't have any \"locale\" field."),
        "{failed}"
    );
    assert_eq!(
        count(
            &app.database,
            "SELECT count(*) AS count FROM events WHERE type = 'crm.twenty.sync_failed'"
        )
        .await,
        1
    );

    let health = admin(&app, Method::GET, &format!("{BASE}/sync/health"), None).await;
    assert_eq!(health.body["counts"]["failed"], 1, "{}", health.text);
    let listed = call(
        &app,
        &app.keys.manager,
        Method::GET,
        &format!("{BASE}/sync/failed?page_size=10"),
        None,
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.body["syncs"][0]["contact_id"], contact_id);

    // The field is created in Twenty; a manager retries.
    fake.accept_all_fields();
    let retry = async || {
        call(
            &app,
            &app.keys.manager,
            Method::POST,
            &format!("{BASE}/sync/retry"),
            Some(json!({"contact_id": contact_id})),
        )
        .await
    };
    // An id of spaces is a wrong id, not a request to retry every failed sync.
    let blank = call(
        &app,
        &app.keys.manager,
        Method::POST,
        &format!("{BASE}/sync/retry"),
        Some(json!({"contact_id": "   "})),
    )
    .await;
    assert_eq!(blank.status, 400, "{}", blank.text);
    assert_eq!(
        blank.body["details"][0]["field"], "contact_id",
        "{}",
        blank.text
    );
    let retried = retry().await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(retried.body["retried"], 1);
    wait_for_status(&app, &contact_id, "synced").await;
    let not_failed = retry().await;
    assert_eq!(not_failed.status, 400, "{}", not_failed.text);
    assert_eq!(
        crate::helpers::audit_trail(&app.database, "'twenty'")
            .await
            .last()
            .map(String::as_str),
        Some(format!("twenty.sync.retry {contact_id}").as_str()),
        "one retry audited, the refused one not"
    );
    assert_eq!(fake.people()[0]["locale"], "de-DE");

    let user = call(
        &app,
        &app.keys.user,
        Method::POST,
        &format!("{BASE}/sync/retry"),
        None,
    )
    .await;
    assert_eq!(user.status, 403);
}

#[tokio::test]
async fn webhook_signatures_are_checked_with_a_tolerance_and_replays_are_refused() {
    let (app, _fake) = connected().await;
    let record = person_record(
        "7b0c2b9e-0000-4000-8000-0000000000a1",
        "Sig",
        "Ned",
        "sig@example.com",
        "15112340005",
    );
    let body = webhook_body("person.created", &record);
    let now_ms = Utc::now().timestamp_millis();

    let wrong = post_signed(&app, &body, "not-the-secret", now_ms, "n1").await;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    let stale = post_signed(&app, &body, SECRET, now_ms - 10 * 60 * 1000, "n2").await;
    assert_eq!(stale.status, 401, "{}", stale.text);
    assert!(stale.text.contains("tolerance"), "{}", stale.text);
    let unsigned = app
        .send_anonymous(
            Method::POST,
            "/api/v0/webhooks/incoming/twenty",
            &[],
            body.clone(),
        )
        .await;
    assert_eq!(unsigned.status, 401);
    assert_eq!(
        count(&app.database, "SELECT count(*) AS count FROM contacts").await,
        0,
        "nothing refused was applied"
    );

    let good = post_signed(&app, &body, SECRET, now_ms, "n3").await;
    assert_eq!(good.status, 200, "{}", good.text);
    assert_eq!(good.body["results"][0]["outcome"], "applied");
    let replayed = post_signed(&app, &body, SECRET, now_ms, "n3").await;
    assert_eq!(replayed.status, 401, "{}", replayed.text);
    assert!(replayed.text.contains("replayed"), "{}", replayed.text);
    // The nonce is not signed: a replay under a new one is still a replay.
    let renamed = post_signed(&app, &body, SECRET, now_ms, "n4").await;
    assert_eq!(renamed.status, 401, "{}", renamed.text);
    assert!(renamed.text.contains("replayed"), "{}", renamed.text);
}

/// The answer's status, code and message (not its request id).
fn refusal(reply: &HttpReply) -> (u16, Json, Json) {
    (
        reply.status,
        reply.body["code"].clone(),
        reply.body["message"].clone(),
    )
}

#[tokio::test]
async fn a_caller_without_the_secret_cannot_tell_whether_twenty_is_connected() {
    let app = TestApp::spawn().await;
    let record = person_record(
        "7b0c2b9e-0000-4000-8000-0000000000a2",
        "Hid",
        "Den",
        "hidden@example.com",
        "15112340006",
    );
    let body = webhook_body("person.created", &record);
    let now_ms = Utc::now().timestamp_millis();
    let unsigned = async |app: &TestApp| {
        app.send_anonymous(
            Method::POST,
            "/api/v0/webhooks/incoming/twenty",
            &[],
            body.clone(),
        )
        .await
    };

    // Not connected: a call signed with any secret, and one not signed at all...
    let signed_before = post_signed(&app, &body, SECRET, now_ms, "n1").await;
    let unsigned_before = unsigned(&app).await;
    assert_eq!(signed_before.status, 401, "{}", signed_before.text);
    assert_eq!(unsigned_before.status, 401, "{}", unsigned_before.text);

    // ...get what they get once Twenty is connected and the secret is not theirs.
    let (app, fake) = connected_app(app).await;
    let wrong = post_signed(&app, &body, "not-the-secret", now_ms, "n2").await;
    assert_eq!(refusal(&signed_before), refusal(&wrong), "{}", wrong.text);
    assert_eq!(
        refusal(&unsigned_before),
        refusal(&unsigned(&app).await),
        "{}",
        unsigned_before.text
    );
    assert_eq!(
        count(&app.database, "SELECT count(*) AS count FROM contacts").await,
        0,
        "nothing refused was applied"
    );

    // The secret read while nothing was connected is not kept: the connection's is used at
    // once, and so is a new one.
    let good = post_signed(&app, &body, SECRET, now_ms, "n3").await;
    assert_eq!(good.status, 200, "{}", good.text);
    let renewed = admin(
        &app,
        Method::PUT,
        &format!("{BASE}/connection"),
        Some(json!({"base_url": fake.url(), "webhook_secret": "a-new-twenty-webhook-secret"})),
    )
    .await;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    let later = Utc::now().timestamp_millis();
    let old_secret = post_signed(&app, &body, SECRET, later, "n4").await;
    assert_eq!(refusal(&old_secret), refusal(&wrong), "{}", old_secret.text);
    let new_secret = post_signed(&app, &body, "a-new-twenty-webhook-secret", later, "n5").await;
    assert_eq!(new_secret.status, 200, "{}", new_secret.text);
}

#[tokio::test]
async fn changes_from_twenty_apply_to_contacts_and_are_not_echoed_back() {
    let (app, fake) = connected().await;
    let person_id = "7b0c2b9e-0000-4000-8000-0000000000b1";
    let record = person_record(person_id, "Ed", "Ko", "ed@example.com", "15112340006");
    // The batched shape some Twenty versions send.
    let body = json!({
        "eventName": "person.created",
        "objectMetadata": {"nameSingular": "person"},
        "batchSize": 1,
        "items": [{"record": record, "updatedFields": []}],
    })
    .to_string();
    let reply = post_signed(
        &app,
        &body,
        SECRET,
        Utc::now().timestamp_millis(),
        "batch-1",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["results"][0]["outcome"], "applied");
    let contact = contact_by_phone(&app, "+4915112340006").await;
    assert_eq!(contact["name"], "Ed Ko");
    assert_eq!(contact["email"], "ed@example.com");

    let mut updated = record.clone();
    updated["name"]["lastName"] = json!("Koch");
    updated["updatedAt"] = json!(timestamp(Utc::now() + TimeDelta::seconds(2)));
    let reply = send_webhook(&app, "person.updated", &updated).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "applied",
        "{}",
        reply.text
    );
    assert_eq!(
        contact_by_phone(&app, "+4915112340006").await["name"],
        "Ed Koch"
    );

    settled(&app).await;
    assert!(
        fake.writes().is_empty(),
        "echoed to Twenty: {:?}",
        fake.writes()
    );
    let contact_id = contact["id"].as_str().unwrap();
    let sync = sync_of(&app, contact_id).await;
    assert_eq!(sync["status"], "synced");
    assert_eq!(sync["person_id"], person_id);

    // A local change after that is written to the linked person.
    app.upsert_contact(&json!({"phone_number": "+4915112340006", "person_properties": {"email": "ed.koch@example.com"}}))
        .await;
    eventually("the local change reaches Twenty", async || {
        fake.writes().iter().any(|write| {
            write.path == format!("/rest/people/{person_id}")
                && write.body == json!({"emails": {"primaryEmail": "ed.koch@example.com"}})
        })
    })
    .await;
}

#[tokio::test]
async fn fields_a_twenty_record_leaves_out_keep_the_contacts_values() {
    let (app, fake) = connected().await;
    let created = app
        .upsert_contact(&json!({
            "phone_number": "+4915112340007",
            "tags": ["vip"],
            "person_properties": {"name": "Ed Ko", "locale": "de-DE"},
        }))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    let synced = wait_for_status(&app, &contact_id, "synced").await;
    let person_id = synced["person_id"].as_str().unwrap().to_owned();
    assert_eq!(fake.people().len(), 1);

    // A workspace without the custom `tags` and `locale` fields sends records without them.
    let mut renamed = person_record(&person_id, "Ed", "Koch", "", "15112340007");
    renamed["updatedAt"] = json!(timestamp(Utc::now() + TimeDelta::seconds(2)));
    let reply = send_webhook(&app, "person.updated", &renamed).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "applied",
        "{}",
        reply.text
    );
    let contact = contact_by_phone(&app, "+4915112340007").await;
    assert_eq!(contact["name"], "Ed Koch");
    assert_eq!(contact["tags"], json!(["vip"]));
    assert_eq!(contact["locale"], "de-DE");
}

#[tokio::test]
async fn two_syncs_of_one_contact_run_one_after_the_other() {
    let (app, fake) = connected().await;
    fake.slow_down(std::time::Duration::from_millis(300));
    // Two events, two sync jobs, both started before the first has found or made a person.
    let phone = "+4915112340008";
    app.upsert_contact(&json!({"phone_number": phone, "person_properties": {"name": "Ann First"}}))
        .await;
    app.upsert_contact(
        &json!({"phone_number": phone, "person_properties": {"name": "Ann Second"}}),
    )
    .await;
    settled(&app).await;
    let people = fake.people();
    assert_eq!(people.len(), 1, "one person, not one per job: {people:?}");
    assert_eq!(
        people[0]["name"],
        json!({"firstName": "Ann", "lastName": "Second"})
    );
}

#[tokio::test]
async fn an_older_twenty_event_does_not_overwrite_newer_data() {
    let (app, _fake) = connected().await;
    let person_id = "7b0c2b9e-0000-4000-8000-0000000000c1";
    let mut newer = person_record(person_id, "New", "Name", "new@example.com", "15112340007");
    newer["updatedAt"] = json!(timestamp(Utc::now()));
    let reply = send_webhook(&app, "person.updated", &newer).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "applied",
        "{}",
        reply.text
    );

    let mut older = newer.clone();
    older["name"] = json!({"firstName": "Old", "lastName": "Name"});
    older["updatedAt"] = json!(timestamp(Utc::now() - TimeDelta::minutes(3)));
    let reply = send_webhook(&app, "person.updated", &older).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "stale",
        "{}",
        reply.text
    );
    assert_eq!(
        contact_by_phone(&app, "+4915112340007").await["name"],
        "New Name"
    );

    // A local change made after a Twenty edit wins over that edit arriving late.
    let before_local = Utc::now();
    app.upsert_contact(
        &json!({"phone_number": "+4915112340007", "person_properties": {"name": "Local Change"}}),
    )
    .await;
    let mut late = newer.clone();
    late["name"] = json!({"firstName": "Late", "lastName": "Edit"});
    late["updatedAt"] = json!(timestamp(before_local - TimeDelta::milliseconds(1)));
    let reply = send_webhook(&app, "person.updated", &late).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "stale",
        "{}",
        reply.text
    );
    assert_eq!(
        contact_by_phone(&app, "+4915112340007").await["name"],
        "Local Change"
    );
}

#[tokio::test]
async fn a_person_deleted_in_twenty_unlinks_the_contact_and_keeps_it() {
    let (app, fake) = connected().await;
    let person_id = "7b0c2b9e-0000-4000-8000-0000000000d1";
    let record = person_record(person_id, "Del", "Eted", "del@example.com", "15112340008");
    send_webhook(&app, "person.created", &record).await;
    let contact = contact_by_phone(&app, "+4915112340008").await;
    let contact_id = contact["id"].as_str().unwrap().to_owned();

    let reply = send_webhook(&app, "person.deleted", &record).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "unlinked",
        "{}",
        reply.text
    );
    assert_eq!(reply.body["results"][0]["contact_id"], contact_id);
    let sync = sync_of(&app, &contact_id).await;
    assert_eq!(sync["status"], "unlinked");
    assert!(sync["person_id"].is_null());
    assert_eq!(
        contact_by_phone(&app, "+4915112340008").await["id"],
        contact_id
    );

    // The deleted person is not recreated by the next local change.
    app.upsert_contact(
        &json!({"phone_number": "+4915112340008", "person_properties": {"plan": "x"}}),
    )
    .await;
    settled(&app).await;
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    let health = admin(&app, Method::GET, &format!("{BASE}/sync/health"), None).await;
    assert_eq!(health.body["counts"]["unlinked"], 1);
}

#[tokio::test]
async fn a_delete_older_than_a_restore_already_applied_is_stale() {
    let (app, _fake) = connected().await;
    let person_id = "7b0c2b9e-0000-4000-8000-0000000000d2";
    let created = person_record(person_id, "Re", "Stored", "re@example.com", "15112340009");
    send_webhook(&app, "person.created", &created).await;
    let contact = contact_by_phone(&app, "+4915112340009").await;
    let contact_id = contact["id"].as_str().unwrap().to_owned();

    // Deleted, then restored; the restore arrives first.
    let deleted_at = Utc::now() + TimeDelta::seconds(2);
    let mut deleted = created.clone();
    deleted["deletedAt"] = json!(timestamp(deleted_at));
    deleted["updatedAt"] = json!(timestamp(deleted_at));
    let mut restored = created.clone();
    restored["updatedAt"] = json!(timestamp(deleted_at + TimeDelta::seconds(2)));
    let reply = send_webhook(&app, "person.restored", &restored).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "applied",
        "{}",
        reply.text
    );
    let reply = send_webhook(&app, "person.deleted", &deleted).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "stale",
        "{}",
        reply.text
    );

    // The restore's change queued a sync of its own, which marks the record pending until it
    // has run: the record settles as synced, still linked.
    let sync = wait_for_status(&app, &contact_id, "synced").await;
    assert_eq!(sync["person_id"], person_id);
}

#[tokio::test]
async fn an_update_older_than_the_persons_delete_arriving_after_it_is_stale() {
    let (app, fake) = connected().await;
    let person_id = "7b0c2b9e-0000-4000-8000-0000000000d3";
    let created = person_record(person_id, "Gone", "Soon", "gone@example.com", "15112340151");
    send_webhook(&app, "person.created", &created).await;
    let contact = contact_by_phone(&app, "+4915112340151").await;
    let contact_id = contact["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "synced").await;

    // Edited, then deleted; the edit's webhook arrives last.
    let edited_at = Utc::now() + TimeDelta::seconds(2);
    let mut edited = created.clone();
    edited["name"] = json!({"firstName": "Late", "lastName": "Edit"});
    edited["updatedAt"] = json!(timestamp(edited_at));
    let mut deleted = created.clone();
    deleted["deletedAt"] = json!(timestamp(edited_at + TimeDelta::seconds(2)));
    let reply = send_webhook(&app, "person.deleted", &deleted).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "unlinked",
        "{}",
        reply.text
    );
    let reply = send_webhook(&app, "person.updated", &edited).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "stale",
        "{}",
        reply.text
    );
    let sync = sync_of(&app, &contact_id).await;
    assert_eq!(sync["status"], "unlinked", "{sync}");
    assert_eq!(
        contact_by_phone(&app, "+4915112340151").await["name"],
        "Gone Soon"
    );

    // A restore newer than the delete links the person again.
    let mut restored = created.clone();
    restored["updatedAt"] = json!(timestamp(edited_at + TimeDelta::seconds(4)));
    let reply = send_webhook(&app, "person.restored", &restored).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "applied",
        "{}",
        reply.text
    );
    let sync = wait_for_status(&app, &contact_id, "synced").await;
    assert_eq!(sync["person_id"], person_id);
    // Nothing was created in Twenty on the way.
    assert!(fake.people().is_empty(), "{:?}", fake.people());
}

#[tokio::test]
async fn backfill_links_and_creates_contacts_across_pages() {
    let (app, fake) = connected().await;
    // An existing contact that one Twenty person matches by phone.
    let existing = app
        .upsert_contact(
            &json!({"phone_number": "+4915112340010", "person_properties": {"name": "Known"}}),
        )
        .await;
    let existing_id = existing["contact"]["id"].as_str().unwrap().to_owned();
    settled(&app).await;
    // The contact was synced out, so Twenty's first person is linked to it already.
    let linked_person = fake.people()[0]["id"].clone();
    let phones = ["15112340011", "15112340012", "15112340013", "15112340010"];
    for (index, national) in phones.iter().enumerate() {
        fake.insert_person(json!({
            "name": {"firstName": format!("P{index}"), "lastName": "Imported"},
            "emails": {"primaryEmail": format!("p{index}@example.com")},
            "phones": {"primaryPhoneNumber": national, "primaryPhoneCallingCode": "+49", "primaryPhoneCountryCode": "DE"},
        }));
    }
    fake.insert_person(json!({"name": {"firstName": "No", "lastName": "Phone"}}));
    let started = admin(
        &app,
        Method::POST,
        &format!("{BASE}/backfill"),
        Some(json!({"page_size": 2})),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text);
    assert_eq!(started.body["status"], "running");
    assert_eq!(
        crate::helpers::audit_trail(&app.database, "'twenty'")
            .await
            .last()
            .map(String::as_str),
        Some("twenty.backfill.start")
    );

    let backfill = &until_backfill_completes(&app).await;
    // Six people: the one synced out earlier (already linked), three new ones, one with the
    // known contact's phone (that contact is linked to another person), one without a phone.
    assert_eq!(backfill["pages"], 3, "{backfill}");
    assert_eq!(backfill["people_seen"], 6, "{backfill}");
    assert_eq!(backfill["created"], 3, "{backfill}");
    assert_eq!(backfill["skipped"], 3, "{backfill}");
    // Imported contacts' own events queue syncs that find nothing to write.
    settled(&app).await;
    for national in &phones[..3] {
        let contact = contact_by_phone(&app, &format!("+49{national}")).await;
        assert!(contact["name"].as_str().unwrap().ends_with("Imported"));
        let sync = sync_of(&app, contact["id"].as_str().unwrap()).await;
        assert_eq!(sync["status"], "synced");
    }
    assert_eq!(
        sync_of(&app, &existing_id).await["person_id"],
        linked_person
    );

    // Imported contacts are not written back.
    assert_eq!(
        fake.writes()
            .iter()
            .filter(|write| write.method == Method::POST)
            .count(),
        1
    );
}

#[tokio::test]
async fn backfill_links_an_unlinked_contact_by_phone() {
    let app = TestApp::spawn().await;
    let fake = FakeTwenty::start(API_KEY).await;
    // Contacts that exist before Twenty is connected are not synced until they change.
    let existing = app
        .upsert_contact(
            &json!({"phone_number": "+4915112340020", "person_properties": {"name": "Before"}}),
        )
        .await;
    let existing_id = existing["contact"]["id"].as_str().unwrap().to_owned();
    settled(&app).await;
    admin(
        &app,
        Method::PUT,
        &format!("{BASE}/connection"),
        Some(json!({"base_url": fake.url(), "api_key": API_KEY, "webhook_secret": SECRET})),
    )
    .await;
    let person = fake.insert_person(json!({
        "name": {"firstName": "In", "lastName": "Twenty"},
        "phones": {"primaryPhoneNumber": "15112340020", "primaryPhoneCallingCode": "+49"},
    }));
    let started = admin(&app, Method::POST, &format!("{BASE}/backfill"), None).await;
    assert_eq!(started.status, 200, "{}", started.text);
    until_backfill_completes(&app).await;
    let sync = sync_of(&app, &existing_id).await;
    assert_eq!(sync["person_id"], person["id"]);
    let health = admin(&app, Method::GET, &format!("{BASE}/sync/health"), None).await;
    assert_eq!(health.body["backfill"]["linked"], 1, "{}", health.text);
    assert_eq!(health.body["backfill"]["created"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_while_a_sync_finds_the_person_gone_keeps_the_link() {
    let (app, fake) = connected().await;
    let person = fake.insert_person(json!({
        "name": {"firstName": "Back", "lastName": "Again"},
        "phones": {"primaryPhoneNumber": "15112340171", "primaryPhoneCallingCode": "+49"},
    }));
    let person_id = person["id"].as_str().unwrap().to_owned();
    let mut record = person.clone();
    record["phones"]["primaryPhoneCountryCode"] = json!("DE");
    let reply = send_webhook(&app, "person.created", &record).await;
    let contact_id = reply.body["results"][0]["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_status(&app, &contact_id, "synced").await;

    // A local change's sync finds the person deleted; before its 404 arrives, the person is
    // restored in Twenty and the restore's webhook is applied.
    // Its request is answered after 3 s: time for the restore's webhook even on a busy machine.
    fake.slow_down(std::time::Duration::from_secs(3));
    fake.fail_next(Failure::DeletedFirst);
    let arrived = fake.arrivals();
    app.upsert_contact(
        &json!({"phone_number": "+4915112340171", "person_properties": {"name": "Local Change"}}),
    )
    .await;
    eventually("the sync's request is in flight", async || {
        fake.arrivals() > arrived
    })
    .await;
    let mut restored = record.clone();
    restored["updatedAt"] = json!(timestamp(Utc::now() + TimeDelta::seconds(1)));
    let reply = send_webhook(&app, "person.restored", &restored).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "applied",
        "{}",
        reply.text
    );

    // The sync's 404 does not undo the restore's link.
    eventually("the sync's 404 arrives", async || {
        fake.requests()
            .iter()
            .any(|request| request.method == Method::PATCH)
    })
    .await;
    settled(&app).await;
    let sync = sync_of(&app, &contact_id).await;
    assert_eq!(sync["status"], "synced", "{sync}");
    assert_eq!(sync["person_id"], person_id.as_str(), "{sync}");
}

#[tokio::test]
async fn a_backfill_page_read_before_a_persons_delete_does_not_link_it_again() {
    let (app, fake) = connected().await;
    // As a page read just before the delete would list it: Twenty's copy, still there.
    let person = fake.insert_person(json!({
        "name": {"firstName": "Read", "lastName": "Before"},
        "phones": {"primaryPhoneNumber": "15112340161", "primaryPhoneCallingCode": "+49"},
    }));
    let person_id = person["id"].as_str().unwrap();
    let mut linked = person.clone();
    linked["phones"]["primaryPhoneCountryCode"] = json!("DE");
    let reply = send_webhook(&app, "person.created", &linked).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "applied",
        "{}",
        reply.text
    );
    let contact_id = reply.body["results"][0]["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut deleted = linked.clone();
    deleted["deletedAt"] = json!(timestamp(Utc::now() + TimeDelta::seconds(2)));
    let reply = send_webhook(&app, "person.deleted", &deleted).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "unlinked",
        "{}",
        reply.text
    );

    let started = admin(&app, Method::POST, &format!("{BASE}/backfill"), None).await;
    assert_eq!(started.status, 200, "{}", started.text);
    until_backfill_completes(&app).await;
    let sync = sync_of(&app, &contact_id).await;
    assert_eq!(sync["status"], "unlinked", "{sync}");
    let health = admin(&app, Method::GET, &format!("{BASE}/sync/health"), None).await;
    assert_eq!(health.body["backfill"]["skipped"], 1, "{}", health.text);
    assert_eq!(fake.people().len(), 1, "{person_id}");
}

#[tokio::test]
async fn a_tag_written_by_an_emarsys_event_rule_reaches_twenty() {
    let (app, fake) = connected().await;
    let manager = [
        ("x-api-key", app.keys.manager.as_str()),
        ("content-type", "application/json"),
    ];
    let rule = app
        .send(
            Method::PUT,
            "/api/v1/admin/event-rules/order_placed",
            &manager,
            r#"{"add_tags": ["customer"], "set_properties": [{"property": "segment", "value": "buyer"}]}"#,
        )
        .await;
    assert_eq!(rule.status, 200, "{}", rule.text);
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340030", "tags": ["vip"]}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "synced").await;

    let event = app
        .send_anonymous(
            Method::POST,
            "/api/v0/webhooks/incoming/emarsys/custom_external_event",
            &[("content-type", "application/json")],
            json!({"event_name": "order_placed", "phone_number": "+4915112340030"}).to_string(),
        )
        .await;
    assert_eq!(event.status, 200, "{}", event.text);
    eventually("the rule's tag reaches Twenty", async || {
        fake.people()[0]["tags"] == json!(["customer", "vip"])
    })
    .await;
}

#[tokio::test]
async fn a_failed_backfill_resumes_from_the_last_imported_page() {
    let (app, fake) = connected().await;
    for index in 0..5 {
        fake.insert_person(json!({
            "name": {"firstName": format!("R{index}"), "lastName": "Resume"},
            "phones": {"primaryPhoneNumber": format!("1511234005{index}"), "primaryPhoneCallingCode": "+49"},
        }));
    }
    // Page 1 succeeds; page 2 is refused for good.
    fake.fail_next(Failure::Pass);
    fake.fail_next(Failure::BadRequest("Invalid cursor".to_owned()));
    let backfill = format!("{BASE}/backfill");
    let health = format!("{BASE}/sync/health");
    admin(&app, Method::POST, &backfill, Some(json!({"page_size": 2}))).await;
    let mut state = Json::Null;
    eventually("the backfill fails", async || {
        state = admin(&app, Method::GET, &health, None).await.body["backfill"].clone();
        state["status"] == "failed"
    })
    .await;
    assert_eq!(state["pages"], 1, "{state}");
    assert_eq!(state["created"], 2, "{state}");
    assert!(
        state["last_error"]
            .as_str()
            .unwrap()
            .contains("Invalid cursor"),
        "{state}"
    );

    let resumed = admin(&app, Method::POST, &backfill, None).await;
    assert_eq!(resumed.body["status"], "running", "{}", resumed.text);
    state = until_backfill_completes(&app).await;
    assert_eq!(state["pages"], 3, "{state}");
    assert_eq!(state["people_seen"], 5, "{state}");
    assert_eq!(state["created"], 5, "{state}");
    let first_page_end = fake.people()[1]["id"].as_str().unwrap().to_owned();
    let page_reads: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|request| request.method == Method::GET)
        .map(|request| request.query)
        .collect();
    assert_eq!(
        page_reads
            .iter()
            .filter(|query| query.contains(&format!("starting_after={first_page_end}")))
            .count(),
        2,
        "page 2 was read once, refused, and read again on resume: {page_reads:?}"
    );
    assert_eq!(
        count(&app.database, "SELECT count(*) AS count FROM contacts").await,
        5
    );
}

#[derive(diesel::QueryableByName)]
struct DeadJob {
    #[diesel(sql_type = diesel::sql_types::Text)]
    error: String,
}

/// Runs `sql` on the test database.
async fn execute(app: &TestApp, sql: &str) {
    let mut connection = app.database.connect().await;
    diesel::sql_query(sql)
        .execute(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

/// Waits until a job of `kind` has failed once, then spends its attempts but the last, which it
/// makes at once: the next failure dead-letters it.
async fn until_its_last_attempt(app: &TestApp, kind: &str) {
    until_its_last_attempt_at(app, kind, "now()").await;
}

/// [`until_its_last_attempt`], with the last attempt due at the SQL time `run_after`.
async fn until_its_last_attempt_at(app: &TestApp, kind: &str, run_after: &str) {
    // The check and the change in one statement: a worker may claim the job between two.
    let sql = format!(
        "UPDATE outbox_jobs SET attempts = max_attempts - 1, run_after = {run_after} \
         WHERE kind = '{kind}' AND status = 'pending' AND last_error IS NOT NULL"
    );
    eventually("the job failed once, and is pending", async || {
        let mut connection = app.database.connect().await;
        diesel::sql_query(&sql)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
            >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_page_that_fails_on_every_run_fails_the_backfill() {
    let app = TestApp::builder()
        .outbox_poll_interval(std::time::Duration::from_millis(100))
        .spawn()
        .await;
    let (app, fake) = connected_app(app).await;
    fake.insert_person(json!({
        "name": {"firstName": "Never", "lastName": "Imported"},
        "phones": {"primaryPhoneNumber": "15112340070", "primaryPhoneCallingCode": "+49"},
    }));
    // The import's contact cannot be written, on any run.
    execute(
        &app,
        "ALTER TABLE contacts ADD CONSTRAINT no_new_contacts CHECK (false) NOT VALID",
    )
    .await;
    let backfill = format!("{BASE}/backfill");
    let health = format!("{BASE}/sync/health");
    admin(&app, Method::POST, &backfill, None).await;
    until_its_last_attempt(&app, "twenty.backfill").await;

    let mut state = Json::Null;
    eventually("the backfill fails", async || {
        state = admin(&app, Method::GET, &health, None).await.body["backfill"].clone();
        state["status"] == "failed"
    })
    .await;
    // The dead job's error, as the backfill's.
    let mut connection = app.database.connect().await;
    let dead: Vec<DeadJob> = diesel::sql_query(
        "SELECT last_error AS error FROM outbox_jobs \
         WHERE kind = 'twenty.backfill' AND status = 'dead'",
    )
    .load(&mut connection)
    .await
    .expect("dead jobs");
    assert_eq!(dead.len(), 1);
    assert_eq!(state["last_error"], dead[0].error, "{state}");

    // Once the cause is gone, starting it again completes it.
    execute(&app, "ALTER TABLE contacts DROP CONSTRAINT no_new_contacts").await;
    admin(&app, Method::POST, &backfill, None).await;
    state = until_backfill_completes(&app).await;
    assert_eq!(state["created"], 1, "{state}");
}

/// The backfill's run: its status and cursor.
#[derive(diesel::QueryableByName)]
struct BackfillRun {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    cursor: Option<String>,
}

async fn backfill_run(app: &TestApp) -> BackfillRun {
    let mut connection = app.database.connect().await;
    diesel::sql_query("SELECT status, cursor FROM twenty_backfill")
        .get_result(&mut connection)
        .await
        .expect("the backfill's run")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_backfill_page_job_neither_reads_twenty_nor_fails_the_run() {
    let app = TestApp::builder()
        .outbox_poll_interval(std::time::Duration::from_millis(100))
        .spawn()
        .await;
    let (app, fake) = connected_app(app).await;
    // A run another job has moved past its first page, and a duplicate of that first page's
    // job, run again after its lease expired. Twenty would refuse the read.
    execute(
        &app,
        "INSERT INTO twenty_backfill (run_id, status, page_size, cursor, pages, started_at, updated_at) \
         VALUES ('0193a3b0-0000-7000-8000-000000000001', 'running', 2, 'after-page-1', 1, now(), now())",
    )
    .await;
    fake.fail_next(Failure::BadRequest("Invalid cursor".to_owned()));
    execute(
        &app,
        "INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after, created_at, updated_at) \
         VALUES (gen_random_uuid(), 'twenty.backfill', \
                 '{\"run_id\": \"0193a3b0-0000-7000-8000-000000000001\", \"after\": null}', \
                 'pending', 1, 10, now(), now(), now())",
    )
    .await;
    eventually("the stale job ends", async || {
        count(
            &app.database,
            "SELECT count(*) AS count FROM outbox_jobs \
             WHERE kind = 'twenty.backfill' AND status = 'succeeded'",
        )
        .await
            == 1
    })
    .await;
    let run = backfill_run(&app).await;
    assert_eq!(run.status, "running");
    assert_eq!(run.cursor.as_deref(), Some("after-page-1"));
    assert_eq!(fake.arrivals(), 0, "the stale job read a page");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_page_job_queued_before_jobs_named_their_page_reads_at_the_runs_cursor() {
    let app = TestApp::builder()
        .outbox_poll_interval(std::time::Duration::from_millis(100))
        .spawn()
        .await;
    let (app, fake) = connected_app(app).await;
    for index in 0..3 {
        fake.insert_person(json!({
            "name": {"firstName": format!("U{index}"), "lastName": "Unnamed"},
            "phones": {"primaryPhoneNumber": format!("1511234009{index}"), "primaryPhoneCallingCode": "+49"},
        }));
    }
    // A run past its first page, and its next page's job as the previous version queued it:
    // with no cursor in its payload.
    let first_page_end = fake.people()[0]["id"].as_str().unwrap().to_owned();
    execute(
        &app,
        &format!(
            "INSERT INTO twenty_backfill (run_id, status, page_size, cursor, pages, started_at, updated_at) \
             VALUES ('0193a3b0-0000-7000-8000-000000000002', 'running', 2, '{first_page_end}', 1, now(), now())"
        ),
    )
    .await;
    execute(
        &app,
        "INSERT INTO outbox_jobs (id, kind, payload, max_attempts, run_after, created_at, updated_at) \
         VALUES (gen_random_uuid(), 'twenty.backfill', \
                 '{\"run_id\": \"0193a3b0-0000-7000-8000-000000000002\"}', 10, now(), now(), now())",
    )
    .await;

    let state = until_backfill_completes(&app).await;
    assert_eq!(state["pages"], 2, "{state}");
    assert_eq!(
        state["created"], 2,
        "the two people after the run's cursor: {state}"
    );
    let page_reads: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|request| request.method == Method::GET)
        .map(|request| request.query)
        .collect();
    assert!(
        page_reads
            .iter()
            .any(|query| query.contains(&format!("starting_after={first_page_end}"))),
        "read after the run's cursor: {page_reads:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_page_refused_after_its_run_moved_on_leaves_the_run_alone() {
    let app = TestApp::builder()
        .outbox_poll_interval(std::time::Duration::from_millis(100))
        .spawn()
        .await;
    let (app, fake) = connected_app(app).await;
    fake.insert_person(json!({
        "name": {"firstName": "Moved", "lastName": "On"},
        "phones": {"primaryPhoneNumber": "15112340080", "primaryPhoneCallingCode": "+49"},
    }));
    // Long enough for the update below to land while the read waits, on a loaded machine.
    fake.slow_down(std::time::Duration::from_secs(3));
    fake.fail_next(Failure::BadRequest("Invalid cursor".to_owned()));
    admin(&app, Method::POST, &format!("{BASE}/backfill"), None).await;
    // The first page's job is reading; meanwhile a duplicate of it imports the page.
    eventually("the first page is being read", async || {
        fake.arrivals() == 1
    })
    .await;
    execute(
        &app,
        "UPDATE twenty_backfill SET cursor = 'after-page-1', pages = 1",
    )
    .await;
    eventually("the refused read's job ends", async || {
        count(
            &app.database,
            "SELECT count(*) AS count FROM outbox_jobs \
             WHERE kind = 'twenty.backfill' AND status = 'succeeded'",
        )
        .await
            == 1
    })
    .await;
    let run = backfill_run(&app).await;
    assert_eq!(
        run.status, "running",
        "the refusal failed a run that moved on"
    );
    assert_eq!(run.cursor.as_deref(), Some("after-page-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_whose_every_run_fails_in_the_database_fails_the_record() {
    let app = TestApp::builder()
        .outbox_poll_interval(std::time::Duration::from_millis(100))
        .spawn()
        .await;
    let (app, _fake) = connected_app(app).await;
    // What Twenty answered cannot be recorded, on any run.
    execute(
        &app,
        "ALTER TABLE twenty_contact_syncs ADD CONSTRAINT never_synced \
         CHECK (status <> 'synced') NOT VALID",
    )
    .await;
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340080"}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    until_its_last_attempt(&app, "twenty.sync").await;

    let failed = wait_for_status(&app, &contact_id, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("never_synced"),
        "{failed}"
    );
    eventually("crm.twenty.sync_failed is emitted", async || {
        count(
            &app.database,
            "SELECT count(*) AS count FROM events WHERE type = 'crm.twenty.sync_failed'",
        )
        .await
            == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_sync_leaves_a_contact_that_another_sync_brought_up_to_date() {
    let app = TestApp::builder()
        .outbox_poll_interval(std::time::Duration::from_millis(100))
        .spawn()
        .await;
    let (app, _fake) = connected_app(app).await;
    let block = "ALTER TABLE twenty_contact_syncs ADD CONSTRAINT never_synced \
                 CHECK (status <> 'synced') NOT VALID";
    execute(&app, block).await;
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340081"}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    // Put off (in the same statement, so that no worker runs it meanwhile), while the contact
    // is synced as by a later job.
    until_its_last_attempt_at(&app, "twenty.sync", "now() + interval '1 hour'").await;
    execute(
        &app,
        "ALTER TABLE twenty_contact_syncs DROP CONSTRAINT never_synced",
    )
    .await;
    execute(
        &app,
        &format!(
            "UPDATE twenty_contact_syncs SET status = 'synced' WHERE contact_id = '{contact_id}'"
        ),
    )
    .await;
    execute(&app, block).await;
    execute(
        &app,
        "UPDATE outbox_jobs SET run_after = now() WHERE kind = 'twenty.sync'",
    )
    .await;

    eventually("the old sync job is dead", async || {
        count(
            &app.database,
            "SELECT count(*) AS count FROM outbox_jobs WHERE kind = 'twenty.sync' AND status = 'dead'",
        )
        .await
            == 1
    })
    .await;
    settled(&app).await;
    assert_eq!(sync_of(&app, &contact_id).await["status"], "synced");
    let failures = count(
        &app.database,
        "SELECT count(*) AS count FROM events WHERE type = 'crm.twenty.sync_failed'",
    )
    .await;
    assert_eq!(failures, 0);
}

/// The jobs Twenty's paths queue are announced once committed (see `wakeups.rs`): with the poll
/// an hour away, each still runs at once.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_jobs_run_without_waiting_for_the_poll() {
    let (app, fake) = connected_app(
        TestApp::builder()
            .outbox_poll_interval(std::time::Duration::from_secs(3600))
            .spawn()
            .await,
    )
    .await;

    // A contact write: its sync job, queued and announced by the event's consumer.
    app.upsert_contact(
        &json!({"phone_number": "+4915112340020", "person_properties": {"name": "Out Going"}}),
    )
    .await;
    eventually("the contact is pushed to Twenty", async || {
        !fake.writes().is_empty()
    })
    .await;
    settled(&app).await;

    // A webhook from Twenty: the new contact's event, announced by the request.
    let person_id = "7b0c2b9e-0000-4000-8000-0000000000c1";
    let record = person_record(person_id, "In", "Coming", "in@example.com", "15112340021");
    let reply = send_webhook(&app, "person.created", &record).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    until_dispatched(&app.database, 2).await;
    settled(&app).await;

    // A backfill: its first page's job, announced by the request; the next page's, by the job.
    for national in ["15112340022", "15112340023", "15112340024"] {
        fake.insert_person(json!({
            "name": {"firstName": "Back", "lastName": "Filled"},
            "phones": {"primaryPhoneNumber": national, "primaryPhoneCallingCode": "+49", "primaryPhoneCountryCode": "DE"},
        }));
    }
    let started = admin(
        &app,
        Method::POST,
        &format!("{BASE}/backfill"),
        Some(json!({"page_size": 2})),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text);
    until_backfill_completes(&app).await;
    settled(&app).await;

    // A sync Twenty refuses for good: its `crm.twenty.sync_failed` event, announced by the job.
    fake.refuse_field("locale");
    let created = app
        .upsert_contact(
            &json!({"phone_number": "+4915112340025", "person_properties": {"locale": "de-DE"}}),
        )
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "failed").await;
    eventually("the sync_failed event is dispatched", async || {
        count(
            &app.database,
            "SELECT count(*) AS count FROM outbox_jobs AS j JOIN events AS e \
             ON e.id = j.payload->>'event_id' \
             WHERE e.type = 'crm.twenty.sync_failed' AND j.status = 'succeeded'",
        )
        .await
            == 1
    })
    .await;
    settled(&app).await;

    // A manager's retry of it: the new sync job, announced by the request.
    fake.accept_all_fields();
    let retried = admin(
        &app,
        Method::POST,
        &format!("{BASE}/sync/retry"),
        Some(json!({"contact_id": contact_id})),
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    wait_for_status(&app, &contact_id, "synced").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_made_by_another_instance_syncs_the_next_contact_change() {
    let app = TestApp::spawn().await;
    let fake = FakeTwenty::start(API_KEY).await;
    until_config_listened(&app.database).await;
    // Not connected: the consumer reads so, and keeps it.
    app.upsert_contact(&json!({"phone_number": "+4915112340030"}))
        .await;
    until_dispatched(&app.database, 1).await;

    // Connected in SQL, as by another instance: this one's API tells its consumer nothing.
    let mut connection = app.database.connect().await;
    diesel::sql_query(
        "INSERT INTO twenty_connection (base_url, api_key, created_at, updated_at) \
         VALUES ($1, $2, now(), now())",
    )
    .bind::<diesel::sql_types::Text, _>(fake.url())
    .bind::<diesel::sql_types::Text, _>(API_KEY)
    .execute(&mut connection)
    .await
    .expect("connect");

    let mut change = 0;
    eventually("a contact change reaches Twenty", async || {
        change += 1;
        app.upsert_contact(&json!({
            "phone_number": "+4915112340030",
            "person_properties": {"name": format!("Name {change}")}
        }))
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        !fake.writes().is_empty()
    })
    .await;
}

/// A request waits for a busy worker only for a job it may have (`docs/outbox.md`): here the
/// only slot is held by a sync waiting for a slow Twenty, and a published event that nobody
/// listens to is answered without waiting for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_nobody_listens_to_does_not_wait_for_a_busy_worker() {
    use switchbord_api::json::struct_from_json;
    use switchbord_api::v1::PublishEventRequest;
    use switchbord_api::v1::event_service_client::EventServiceClient;

    let app = TestApp::builder()
        .outbox_workers(1)
        .outbox_start_wait(std::time::Duration::from_secs(10))
        .spawn()
        .await;
    let (app, fake) = connected_app(app).await;
    fake.slow_down(std::time::Duration::from_secs(5));
    app.upsert_contact(&json!({"phone_number": "+4915112345678"}))
        .await;
    eventually("the contact's sync is waiting for Twenty", async || {
        !fake.requests().is_empty()
    })
    .await;

    let mut events = EventServiceClient::with_interceptor(
        app.channel().await,
        crate::helpers::WithKey::new(Some(&app.keys.user)),
    );
    let asked = std::time::Instant::now();
    events
        .publish_event(PublishEventRequest {
            r#type: "message.delivered".to_owned(),
            data: Some(struct_from_json(
                json!({"message_id": "wamid.1"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )),
            source: "sender".to_owned(),
        })
        .await
        .expect("publish");
    // Waiting for the slot would take until the sync's 5 s answer at least.
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(3),
        "the publish waited for the worker: {:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_of_more_failed_syncs_than_one_statement_can_queue_queues_them_all() {
    use diesel_async::SimpleAsyncConnection;
    let app = TestApp::spawn().await;
    // More than one statement's 65,535 parameters hold at eight or so per job.
    const FAILED: i64 = 10_000;
    let mut connection = app.database.connect().await;
    connection
        .batch_execute(&format!(
            "INSERT INTO contacts (id, phone_number)
             SELECT gen_random_uuid(), '+49151' || lpad(n::text, 8, '0')
             FROM generate_series(1, {FAILED}) AS n;
             INSERT INTO twenty_contact_syncs (contact_id, status, attempts, last_error, updated_at)
             SELECT id, 'failed', 5, 'Twenty was down', now() FROM contacts;"
        ))
        .await
        .expect("failed syncs");

    let retried = admin(&app, Method::POST, &format!("{BASE}/sync/retry"), None).await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    assert_eq!(retried.body["retried"], FAILED);
    // Counted in any status: the workers may have run some already.
    let queued = crate::helpers::count(
        &app.database,
        "SELECT count(DISTINCT payload ->> 'contact_id') AS count FROM outbox_jobs
         WHERE kind = 'twenty.sync'",
    )
    .await;
    assert_eq!(queued, FAILED);
}

/// Connects `app` to `fake` (for contacts made before Twenty was connected, which are not synced
/// until they change).
async fn connect(app: &TestApp, fake: &FakeTwenty) {
    let reply = admin(
        app,
        Method::PUT,
        &format!("{BASE}/connection"),
        Some(json!({"base_url": fake.url(), "api_key": API_KEY, "webhook_secret": SECRET})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test]
async fn a_first_link_by_webhook_never_writes_the_contacts_blanks_over_twenty() {
    let app = TestApp::spawn().await;
    let fake = FakeTwenty::start(API_KEY).await;
    let person = fake.insert_person(json!({
        "name": {"firstName": "In", "lastName": "Twenty"},
        "emails": {"primaryEmail": "in@example.com"},
        "phones": {"primaryPhoneNumber": "15112340120", "primaryPhoneCallingCode": "+49"},
    }));
    let edited_in_twenty = Utc::now() - TimeDelta::minutes(1);
    // A contact that knows only its phone number (a trigger's), newer than Twenty's edit.
    app.upsert_contact(&json!({"phone_number": "+4915112340120"}))
        .await;
    settled(&app).await;
    connect(&app, &fake).await;

    let person_id = person["id"].as_str().unwrap();
    let mut record = person_record(person_id, "In", "Twenty", "in@example.com", "15112340120");
    record["updatedAt"] = json!(timestamp(edited_in_twenty));
    let reply = send_webhook(&app, "person.updated", &record).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "stale",
        "{}",
        reply.text
    );
    settled(&app).await;

    let people = fake.people();
    assert_eq!(
        people[0]["name"],
        json!({"firstName": "In", "lastName": "Twenty"})
    );
    assert_eq!(people[0]["emails"]["primaryEmail"], "in@example.com");
}

#[tokio::test]
async fn a_person_found_by_reference_does_not_overwrite_a_newer_local_change() {
    let app = TestApp::spawn().await;
    let fake = FakeTwenty::start(API_KEY).await;
    let person = fake.insert_person(json!({
        "name": {"firstName": "Old", "lastName": "Name"},
        "phones": {"primaryPhoneNumber": "15112340131", "primaryPhoneCallingCode": "+49"},
        "externalReferenceId": "crm-newer-here",
    }));
    let edited_in_twenty = Utc::now() - TimeDelta::minutes(1);
    let local = app
        .upsert_contact(&json!({
            "phone_number": "+4915112340130",
            "external_reference_id": "crm-newer-here",
            "person_properties": {"name": "Local Newer"},
        }))
        .await;
    settled(&app).await;
    connect(&app, &fake).await;

    let person_id = person["id"].as_str().unwrap();
    let mut record = person_record(person_id, "Old", "Name", "", "15112340131");
    record["externalReferenceId"] = json!("crm-newer-here");
    record["updatedAt"] = json!(timestamp(edited_in_twenty));
    let reply = send_webhook(&app, "person.updated", &record).await;
    assert_eq!(
        reply.body["results"][0]["outcome"], "stale",
        "{}",
        reply.text
    );

    let contact = contact_by_phone(&app, "+4915112340130").await;
    assert_eq!(
        contact["id"], local["contact"]["id"],
        "kept its phone number"
    );
    assert_eq!(contact["name"], "Local Newer");
    settled(&app).await;
    let sync = sync_of(&app, contact["id"].as_str().unwrap()).await;
    assert_eq!(sync["person_id"], person_id, "{sync}");
    assert_eq!(
        fake.people()[0]["name"],
        json!({"firstName": "Local", "lastName": "Newer"}),
        "the newer local change reached Twenty"
    );
}

#[tokio::test]
async fn a_long_error_message_from_twenty_is_kept_cut_short() {
    let (app, fake) = connected().await;
    fake.fail_next(Failure::BadRequest("no ".repeat(500_000)));
    let backfill = admin(&app, Method::POST, &format!("{BASE}/backfill"), None).await;
    assert_eq!(backfill.status, 200, "{}", backfill.text);
    let mut state = Json::Null;
    eventually("the backfill fails", async || {
        state = admin(&app, Method::GET, &format!("{BASE}/sync/health"), None)
            .await
            .body["backfill"]
            .clone();
        state["status"] == "failed"
    })
    .await;
    let error = state["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("no no no"), "{error}");
    assert!(
        error.chars().count() < 1200,
        "{} characters",
        error.chars().count()
    );
}

#[tokio::test]
async fn a_webhook_names_what_is_wrong_with_its_one_record_or_its_event_name() {
    let (app, _fake) = connected().await;
    let cases = [
        (
            json!({"eventName": "person.updated", "record": "x"}),
            "record",
        ),
        (
            json!({"eventName": "person.updated", "items": [{"record": {}}, {"record": 7}]}),
            "items[1].record",
        ),
        (
            json!({"eventName": "e".repeat(101), "record": {}}),
            "eventName",
        ),
    ];
    for (body, field) in cases {
        let body = body.to_string();
        let nonce = uuid::Uuid::new_v4().to_string();
        let reply = post_signed(&app, &body, SECRET, Utc::now().timestamp_millis(), &nonce).await;
        assert_eq!(reply.status, 400, "{field}: {}", reply.text);
        assert_eq!(reply.body["details"][0]["field"], field, "{}", reply.text);
    }
}

#[tokio::test]
async fn later_changes_of_a_contact_linked_by_phone_never_write_its_blanks() {
    let (app, fake) = connected().await;
    fake.insert_person(json!({
        "name": {"firstName": "Kept", "lastName": "Name"},
        "phones": {"primaryPhoneNumber": "15112340099", "primaryPhoneCallingCode": "+49"},
    }));
    let created = app
        .upsert_contact(&json!({"phone_number": "+4915112340099"}))
        .await;
    let contact_id = created["contact"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &contact_id, "synced").await;
    // Two changes after the first link: the second compares with what the first one's write
    // left known.
    for email in ["first@example.com", "second@example.com"] {
        app.upsert_contact(&json!({
            "phone_number": "+4915112340099",
            "person_properties": {"email": email},
        }))
        .await;
        eventually("the email reaches Twenty", async || {
            fake.people()[0]["emails"]["primaryEmail"] == email
        })
        .await;
    }
    settled(&app).await;
    assert_eq!(
        fake.people()[0]["name"],
        json!({"firstName": "Kept", "lastName": "Name"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_webhooks_for_a_new_person_at_once_the_newer_version_stays() {
    use diesel_async::SimpleAsyncConnection;
    let (app, _fake) = connected().await;
    let person_id = "7b0c2b9e-0000-4000-8000-0000000000d1";
    let mut newer = person_record(person_id, "New", "Name", "new@example.com", "15112340141");
    newer["updatedAt"] = json!(timestamp(Utc::now()));
    let mut older = newer.clone();
    older["name"] = json!({"firstName": "Old", "lastName": "Name"});
    older["updatedAt"] = json!(timestamp(Utc::now() - TimeDelta::minutes(1)));

    // The newer one creates the contact and then waits to link it; the older one, arriving
    // meanwhile, must not have found the person unlinked and apply its values after it.
    let mut blocker = lock_table(&app.database, "twenty_contact_syncs", "SHARE").await;
    let older_arrives_meanwhile = async {
        until_statements_wait_for_a_lock(&app.database, "%twenty_contact_syncs%", 1).await;
        let release = async {
            eventually("the older webhook waits too", async || {
                count(
                    &app.database,
                    "SELECT count(*) AS count FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'
                        AND query NOT ILIKE '%twenty_contact_syncs%'",
                )
                .await
                    >= 1
            })
            .await;
            blocker.batch_execute("COMMIT").await.expect("unlock");
        };
        tokio::join!(send_webhook(&app, "person.created", &older), release).0
    };
    let (first, second) = tokio::join!(
        send_webhook(&app, "person.updated", &newer),
        older_arrives_meanwhile
    );

    assert_eq!(
        first.body["results"][0]["outcome"], "applied",
        "{}",
        first.text
    );
    assert_eq!(
        second.body["results"][0]["outcome"], "stale",
        "{}",
        second.text
    );
    assert_eq!(
        contact_by_phone(&app, "+4915112340141").await["name"],
        "New Name"
    );
}

#[tokio::test]
async fn a_record_a_contact_cannot_take_is_skipped_and_the_rest_of_the_call_and_the_backfill_apply()
{
    let (app, fake) = connected().await;
    // Twenty's notes go into a property, and a contact's properties hold at most 64 KiB.
    let mapped = admin(
        &app,
        Method::PATCH,
        &format!("{BASE}/mapping"),
        Some(json!({"entries": [
            {"contact_field": "properties.notes", "twenty_field": "notes", "direction": "from_twenty"},
        ]})),
    )
    .await;
    assert_eq!(mapped.status, 200, "{}", mapped.text);
    let long_notes = json!("n".repeat(70 * 1024));
    let mut oversized = person_record(
        "7b0c2b9e-0000-4000-8000-0000000000c1",
        "Long",
        "Notes",
        "long@example.com",
        "15112340201",
    );
    oversized["notes"] = long_notes.clone();
    let fitting = person_record(
        "7b0c2b9e-0000-4000-8000-0000000000c2",
        "Short",
        "Notes",
        "short@example.com",
        "15112340202",
    );
    let body = json!({
        "eventName": "person.created",
        "items": [{"record": oversized}, {"record": fitting}],
    })
    .to_string();
    let reply = post_signed(&app, &body, SECRET, Utc::now().timestamp_millis(), "big-1").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let results = &reply.body["results"];
    assert_eq!(results[0]["outcome"], "skipped", "{results}");
    assert!(
        results[0]["reason"]
            .as_str()
            .unwrap()
            .contains("person_properties"),
        "{results}"
    );
    assert_eq!(results[1]["outcome"], "applied", "{results}");
    assert_eq!(
        contact_by_phone(&app, "+4915112340202").await["name"],
        "Short Notes"
    );
    let mut client = app.contacts_client().await;
    let missing = client
        .get_contact(GetContactRequest {
            lookup: Some(get_contact_request::Lookup::PhoneNumber(
                "+4915112340201".to_owned(),
            )),
        })
        .await
        .expect_err("the skipped record made no contact");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // A linked person whose notes grow past the bound: skipped, its contact unchanged.
    let mut grown = fitting.clone();
    grown["notes"] = long_notes.clone();
    grown["name"]["lastName"] = json!("Grown");
    grown["updatedAt"] = json!(timestamp(Utc::now() + TimeDelta::seconds(2)));
    let reply = send_webhook(&app, "person.updated", &grown).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body["results"][0]["outcome"], "skipped",
        "{}",
        reply.text
    );
    assert_eq!(
        contact_by_phone(&app, "+4915112340202").await["name"],
        "Short Notes"
    );

    // A backfill goes past such a person rather than fail its page on every run.
    fake.insert_person(json!({
        "name": {"firstName": "Backfilled", "lastName": "Long"},
        "notes": long_notes,
        "phones": {"primaryPhoneNumber": "15112340203", "primaryPhoneCallingCode": "+49", "primaryPhoneCountryCode": "DE"},
    }));
    fake.insert_person(json!({
        "name": {"firstName": "Backfilled", "lastName": "Short"},
        "phones": {"primaryPhoneNumber": "15112340204", "primaryPhoneCallingCode": "+49", "primaryPhoneCountryCode": "DE"},
    }));
    let started = admin(
        &app,
        Method::POST,
        &format!("{BASE}/backfill"),
        Some(json!({})),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text);
    let backfill = until_backfill_completes(&app).await;
    assert_eq!(backfill["created"], 1, "{backfill}");
    assert_eq!(backfill["skipped"], 1, "{backfill}");
    assert_eq!(
        contact_by_phone(&app, "+4915112340204").await["name"],
        "Backfilled Short"
    );
}
