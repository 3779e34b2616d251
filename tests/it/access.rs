//! API keys, roles and the audit trail (SPEC §7): every role against every RPC, every way of
//! sending a key, and the audit entries of writes and configuration changes.

use diesel::sql_query;
use diesel::sql_types::{Array, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::json;
use switchbord_api::v1::{
    CreateApiKeyRequest, ListAuditEntriesRequest, RevokeApiKeyRequest, Role, UpsertContactRequest,
};
use switchbord_core::access::rules::{Credential, RULES};
use tonic::Code;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use crate::helpers::{TestApp, WithKey, lock_table, until_statements_wait_for_a_lock};

const CONTACT: &str = r#"{"phone_number": "+4915112345678"}"#;

/// Calls `method` with an empty message (valid for every proto3 request) and returns the
/// status code; the answer is decoded as `Empty`, which ignores every field.
async fn call_code(channel: Channel, method: &'static str, key: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let request =
        tonic::service::Interceptor::call(&mut WithKey::new(key), tonic::Request::new(()))
            .expect("add the key");
    let codec: ProstCodec<(), ()> = ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static(method);
    match grpc.unary(request, path, codec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_against_every_rpc_follows_the_role_table() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;

    for rule in RULES
        .iter()
        .filter(|rule| rule.credential == Credential::ApiKey)
    {
        let anonymous = call_code(channel.clone(), rule.method, None).await;
        assert_eq!(
            anonymous,
            Code::Unauthenticated,
            "anonymous {}",
            rule.method
        );
        for role in [Role::Admin, Role::Manager, Role::User] {
            let code = call_code(channel.clone(), rule.method, Some(app.keys.for_role(role))).await;
            let core_role: switchbord_core::access::Role =
                switchbord_core::access::Role::from_proto(role).expect("role");
            if rule.allows(core_role) {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{role:?} should reach {} but got {code:?}",
                    rule.method
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{role:?} on {}", rule.method);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_is_accepted_in_any_header_case_and_as_bearer() {
    let app = TestApp::spawn().await;
    let key = app.keys.user.clone();
    let bearer = format!("Bearer {key}");
    let lower_bearer = format!("bearer {key}");
    let sent: [(&str, &str); 5] = [
        ("x-api-key", &key),
        ("X-API-KEY", &key),
        ("X-Api-Key", &key),
        ("Authorization", &bearer),
        ("authorization", &lower_bearer),
    ];
    for (name, value) in sent {
        let reply = app
            .send(Method::POST, "/compat/contact", &[(name, value)], CONTACT)
            .await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_bad_keys_are_401_in_the_family_shape_with_www_authenticate() {
    let app = TestApp::spawn().await;
    let huge = format!("sbk_000000000000_{}", "A".repeat(40_000));
    let bad_keys = [
        "sbk_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "sbk_zzzzzzzzzzzz_notakey",
        "not-a-key",
        "Bearer",
        // Longer than an HTTP/2 header block between the gateway and the core may be.
        &huge,
    ];

    let missing = app
        .send_anonymous(Method::POST, "/compat/contact", &[], CONTACT)
        .await;
    assert_eq!(missing.status, 401, "{}", missing.text);
    assert_eq!(missing.body["error"]["code"], "unauthenticated");
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="switchbord""#)
    );
    let legacy = app
        .send_anonymous(Method::PUT, "/api/v1beta/contact/", &[], CONTACT)
        .await;
    assert_eq!(legacy.status, 401);
    assert_eq!(legacy.body["status"], "error");
    assert!(legacy.header("www-authenticate").is_some());
    for key in bad_keys {
        let reply = app
            .send(
                Method::POST,
                "/compat/contact",
                &[("x-api-key", key)],
                CONTACT,
            )
            .await;
        assert_eq!(
            reply.status,
            401,
            "{}…: {}",
            &key[..key.len().min(40)],
            reply.text
        );
    }
    let basic = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            CONTACT,
        )
        .await;
    assert_eq!(basic.status, 401);
    let huge_bearer = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("authorization", &format!("Bearer {huge}"))],
            CONTACT,
        )
        .await;
    assert_eq!(huge_bearer.status, 401, "{}", huge_bearer.text);
    // Each within the bound, together past what one call's headers may carry.
    let half = format!("sbk_000000000000_{}", "A".repeat(8_080));
    let both = app
        .send(
            Method::POST,
            "/compat/contact",
            &[
                ("x-api-key", &half),
                ("authorization", &format!("Bearer {half}")),
            ],
            CONTACT,
        )
        .await;
    assert_eq!(both.status, 401, "{}", both.text);
    // The user key works with one character changed nowhere.
    let mut tampered = app.keys.user.clone();
    let last = tampered.pop().expect("non-empty key");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let reply = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("x-api-key", &tampered)],
            CONTACT,
        )
        .await;
    assert_eq!(reply.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_and_revoked_keys_stop_working() {
    let app = TestApp::spawn().await;
    let mut access = app.access_client_with(Some(&app.keys.admin)).await;
    let create = |name: &str| CreateApiKeyRequest {
        name: name.to_owned(),
        role: Role::User.into(),
        expires_at: None,
    };
    let to_expire = access
        .create_api_key(create("soon-expired"))
        .await
        .expect("create")
        .into_inner();
    let to_revoke = access
        .create_api_key(create("soon-revoked"))
        .await
        .expect("create")
        .into_inner();
    let mut connection = app.database.connect().await;
    sql_query(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE name = 'soon-expired'",
    )
    .execute(&mut connection)
    .await
    .expect("expire the key");

    let expired = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("x-api-key", &to_expire.secret)],
            CONTACT,
        )
        .await;
    let before_revoke = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("x-api-key", &to_revoke.secret)],
            CONTACT,
        )
        .await;
    access
        .revoke_api_key(RevokeApiKeyRequest {
            id: to_revoke.api_key.expect("key").id,
        })
        .await
        .expect("revoke");
    let after_revoke = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("x-api-key", &to_revoke.secret)],
            CONTACT,
        )
        .await;

    assert_eq!(expired.status, 401);
    assert!(
        expired.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired")
    );
    assert_eq!(before_revoke.status, 200);
    assert_eq!(
        after_revoke.status, 401,
        "revocation applies at once on this instance"
    );
    assert!(
        after_revoke.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_listed_in_pages_newest_first() {
    use switchbord_api::v1::ListApiKeysRequest;

    let app = TestApp::spawn().await;
    let mut access = app.access_client_with(Some(&app.keys.admin)).await;
    for index in 0..3 {
        access
            .create_api_key(CreateApiKeyRequest {
                name: format!("paged-{index}"),
                role: Role::User.into(),
                expires_at: None,
            })
            .await
            .expect("create");
    }
    let everything = access
        .list_api_keys(ListApiKeysRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(everything.next_page_token.is_empty(), "one page by default");
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = access
            .list_api_keys(ListApiKeysRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .expect("a page")
            .into_inner();
        assert!(page.api_keys.len() <= 2);
        paged.extend(page.api_keys.into_iter().map(|key| key.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let all: Vec<String> = everything.api_keys.into_iter().map(|key| key.id).collect();
    assert!(all.len() >= 3, "{all:?}");
    assert_eq!(
        paged, all,
        "the pages hold every key once, in the same order"
    );

    let bad = access
        .list_api_keys(ListApiKeysRequest {
            page_token: "%%".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("not a token");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("page_token"), "{}", bad.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_keys_validates_and_shows_the_secret_only_once() {
    let app = TestApp::spawn().await;
    let mut access = app.access_client_with(Some(&app.keys.admin)).await;

    let created = access
        .create_api_key(CreateApiKeyRequest {
            name: "crm-sync".to_owned(),
            role: Role::User.into(),
            expires_at: None,
        })
        .await
        .expect("create")
        .into_inner();
    let listed = access
        .list_api_keys(switchbord_api::v1::ListApiKeysRequest {
            include_revoked: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let no_role = access
        .create_api_key(CreateApiKeyRequest {
            name: "x".to_owned(),
            role: Role::Unspecified.into(),
            expires_at: None,
        })
        .await
        .expect_err("role required");
    let past = access
        .create_api_key(CreateApiKeyRequest {
            name: "x".to_owned(),
            role: Role::User.into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
        })
        .await
        .expect_err("expiry in the past");
    // A name that would forge a line of `switchbord keys list` in an operator's terminal.
    let forging = access
        .create_api_key(CreateApiKeyRequest {
            name: "ops\n0193a3b0-0000-7000-8000-000000000001  sbk_0000  admin  active".to_owned(),
            role: Role::User.into(),
            expires_at: None,
        })
        .await
        .expect_err("a line break in the name");
    let reversed = access
        .create_api_key(CreateApiKeyRequest {
            name: "ops\u{202E}nimda".to_owned(),
            role: Role::User.into(),
            expires_at: None,
        })
        .await
        .expect_err("a right-to-left override in the name");

    let key = created.api_key.expect("key");
    assert!(created.secret.starts_with(&format!("{}_", key.prefix)));
    assert!(key.prefix.starts_with("sbk_"));
    let listed_text = format!("{listed:?}");
    assert!(listed_text.contains(&key.prefix));
    assert!(
        !listed_text.contains(&created.secret),
        "a listing never shows a secret"
    );
    assert_eq!(no_role.code(), Code::InvalidArgument);
    assert_eq!(past.code(), Code::InvalidArgument);
    assert_eq!(forging.code(), Code::InvalidArgument);
    assert_eq!(reversed.code(), Code::InvalidArgument);
    assert!(forging.message().starts_with("name: "), "{forging:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_opt_out_accepts_anonymous_ingestion_only() {
    let app = TestApp::builder().legacy_paths_without_keys().spawn().await;

    let compat = app
        .send_anonymous(Method::POST, "/compat/contact", &[], CONTACT)
        .await;
    let legacy = app
        .send_anonymous(Method::PUT, "/api/v1beta/contact/", &[], CONTACT)
        .await;
    let wrong_key = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("x-api-key", "wrong-key")],
            CONTACT,
        )
        .await;
    // Too long, or not ASCII, to forward as sent: still keys that are sent, and refused.
    let huge_bearer = format!("Bearer sbk_000000000000_{}", "A".repeat(20_000));
    let mut unforwardable = Vec::new();
    for header in [
        ("authorization", huge_bearer.as_str()),
        ("authorization", "Bearer schlüssel"),
        ("x-api-key", "schlüssel"),
    ] {
        let reply = app
            .send(Method::POST, "/compat/contact", &[header], CONTACT)
            .await;
        unforwardable.push((header.1.chars().take(30).collect::<String>(), reply.status));
    }
    let read = call_code(
        app.channel().await,
        "/switchbord.v1.ContactService/GetContact",
        None,
    )
    .await;
    let admin_rpc = call_code(
        app.channel().await,
        "/switchbord.v1.AccessService/ListApiKeys",
        None,
    )
    .await;

    assert_eq!(compat.status, 200, "{}", compat.text);
    assert_eq!(legacy.status, 200, "{}", legacy.text);
    assert_eq!(wrong_key.status, 401, "a key that is sent is still checked");
    for (key, status) in unforwardable {
        assert_eq!(status, 401, "{key}");
    }
    // Another scheme is not a key of ours, readable or not.
    let digest = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("authorization", r#"Digest username="Jürgen""#)],
            CONTACT,
        )
        .await;
    assert_eq!(digest.status, 200, "{}", digest.text);
    // Nor is one too large to forward (a SPNEGO token from a corporate proxy).
    let negotiate = format!("Negotiate {}", "Y".repeat(9 * 1024));
    let negotiate = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("authorization", negotiate.as_str())],
            CONTACT,
        )
        .await;
    assert_eq!(negotiate.status, 200, "{}", negotiate.text);
    assert_eq!(read, Code::Unauthenticated);
    assert_eq!(admin_rpc, Code::Unauthenticated);
}

#[derive(diesel::QueryableByName, Debug)]
struct AuditRow {
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    actor_key_id: Option<uuid::Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    actor_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    actor_role: Option<String>,
    #[diesel(sql_type = SqlUuid)]
    request_id: uuid::Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    source_ip: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    rpc: Option<String>,
    #[diesel(sql_type = Array<Text>)]
    changed_fields: Vec<String>,
}

/// The source address audited for a direct gRPC upsert that names another client address.
async fn audited_address_of_a_forged_client_ip(app: &TestApp) -> Option<String> {
    let request_id = uuid::Uuid::new_v4();
    let mut contacts = app.contacts_client().await;
    let mut request = tonic::Request::new(UpsertContactRequest {
        phone_number: "+4915112345678".to_owned(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "x-switchbord-client-ip",
        "203.0.113.7".parse().expect("metadata"),
    );
    request.metadata_mut().insert(
        "x-request-id",
        request_id.to_string().parse().expect("metadata"),
    );
    contacts.upsert_contact(request).await.expect("upsert");
    let mut connection = app.database.connect().await;
    let rows: Vec<AuditRow> = sql_query(
        "SELECT action, actor_key_id, actor_name, actor_role, request_id, source_ip, rpc, changed_fields
         FROM audit_entries WHERE request_id = $1",
    )
    .bind::<SqlUuid, _>(request_id)
    .load(&mut connection)
    .await
    .expect("audit rows");
    rows[0].source_ip.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_trusted_gateway_may_name_the_client_address() {
    // The built-in gateway runs on this host, which is trusted by default.
    let app = TestApp::spawn().await;
    assert_eq!(
        audited_address_of_a_forged_client_ip(&app).await.as_deref(),
        Some("203.0.113.7")
    );
    // A caller that is not a listed gateway gets its own address audited.
    let app = TestApp::builder()
        .trusted_gateways(&["192.0.2.1/32"])
        .spawn()
        .await;
    assert_eq!(
        audited_address_of_a_forged_client_ip(&app).await.as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_and_config_changes_are_audited_with_actor_and_request_id() {
    let app = TestApp::spawn().await;
    let request_id = uuid::Uuid::new_v4().to_string();

    let upsert = app
        .send(
            Method::POST,
            "/compat/contact",
            &[("x-request-id", &request_id)],
            CONTACT,
        )
        .await;
    assert_eq!(upsert.status, 200);
    let mut access = app.access_client_with(Some(&app.keys.admin)).await;
    let config_request_id = uuid::Uuid::new_v4();
    let mut create = tonic::Request::new(CreateApiKeyRequest {
        name: "audited".to_owned(),
        role: Role::Manager.into(),
        expires_at: None,
    });
    create.metadata_mut().insert(
        "x-request-id",
        config_request_id.to_string().parse().expect("metadata"),
    );
    let created = access
        .create_api_key(create)
        .await
        .expect("create")
        .into_inner();

    let mut connection = app.database.connect().await;
    let rows: Vec<AuditRow> = sql_query(
        "SELECT action, actor_key_id, actor_name, actor_role, request_id, source_ip, rpc, changed_fields
         FROM audit_entries WHERE request_id = ANY($1) ORDER BY occurred_at",
    )
    .bind::<Array<SqlUuid>, _>(vec![
        uuid::Uuid::parse_str(&request_id).expect("uuid"),
        config_request_id,
    ])
    .load(&mut connection)
    .await
    .expect("audit rows");

    assert_eq!(rows.len(), 2, "{rows:?}");
    let contact = &rows[0];
    assert_eq!(contact.action, "contact.create");
    assert_eq!(contact.actor_name.as_deref(), Some("test-ROLE_USER"));
    assert_eq!(contact.actor_role.as_deref(), Some("user"));
    assert!(contact.actor_key_id.is_some());
    assert_eq!(contact.source_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        contact.rpc.as_deref(),
        Some("/switchbord.v1.ContactService/UpsertContact")
    );
    let config = &rows[1];
    assert_eq!(config.action, "api_key.create");
    assert_eq!(config.actor_name.as_deref(), Some("bootstrap-admin"));
    assert_eq!(config.actor_role.as_deref(), Some("admin"));
    assert_eq!(config.request_id, config_request_id);
    assert!(config.changed_fields.contains(&"role".to_owned()));
    let secret = created.secret;
    let everything: Vec<AuditRow> = sql_query(
        "SELECT action, actor_key_id, actor_name, actor_role, request_id, source_ip, rpc, changed_fields FROM audit_entries",
    )
    .load(&mut connection)
    .await
    .expect("all audit rows");
    assert!(
        !format!("{everything:?}").contains(&secret),
        "no secret in the audit trail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_entries_are_listed_filtered_and_paginated() {
    let app = TestApp::spawn().await;
    for index in 0..5 {
        let body = json!({"phone_number": format!("+491511234567{index}")});
        assert_eq!(app.post_json("/compat/contact", &body).await.status, 200);
    }
    let mut access = app.access_client_with(Some(&app.keys.admin)).await;

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = access
            .list_audit_entries(ListAuditEntriesRequest {
                action: "contact.create".to_owned(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        pages.push(page.entries.len());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let by_actor = access
        .list_audit_entries(ListAuditEntriesRequest {
            actor_key_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let bad_token = access
        .list_audit_entries(ListAuditEntriesRequest {
            page_token: "garbage".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    let as_manager = app
        .access_client_with(Some(&app.keys.manager))
        .await
        .list_audit_entries(ListAuditEntriesRequest::default())
        .await
        .expect_err("managers may not read the audit trail");

    assert_eq!(pages, [2, 2, 1]);
    assert!(by_actor.entries.is_empty());
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert_eq!(as_manager.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_callers_get_the_same_checks() {
    let app = TestApp::spawn().await;

    let anonymous = app
        .contacts_client_with(None)
        .await
        .upsert_contact(UpsertContactRequest {
            phone_number: "+4915112345678".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("no key");
    let bearer = {
        let mut client = app.contacts_client_with(None).await;
        let mut request = tonic::Request::new(UpsertContactRequest {
            phone_number: "+4915112345678".to_owned(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", app.keys.manager)
                .parse()
                .expect("metadata"),
        );
        client.upsert_contact(request).await
    };

    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert!(bearer.is_ok(), "{bearer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_core_with_another_pepper_than_its_databases_keys_refuses_to_start() {
    use switchbord_core::access::BootstrapError;
    use switchbord_core::config::{CoreConfig, Secret};
    use switchbord_core::{CoreServer, StartupError};

    let app = TestApp::spawn().await;
    let loopback = "127.0.0.1:0".parse().expect("loopback address");
    let with_pepper = |pepper: &str| CoreConfig {
        key_pepper: Some(Secret::new(pepper)),
        ..CoreConfig::with_addr(loopback)
    };

    let refused = CoreServer::build(
        &with_pepper("another-pepper-0123456789abcdef0123456789"),
        app.database.url(),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(StartupError::Bootstrap(BootstrapError::PepperMismatch))
        ),
        "{:?}",
        refused.err()
    );
    let same = CoreServer::build(
        &with_pepper(crate::helpers::TEST_PEPPER),
        app.database.url(),
    )
    .await;
    assert!(same.is_ok(), "{:?}", same.err());
}

async fn upsert(app: &TestApp, phone: &str) -> crate::helpers::HttpReply {
    app.post_json("/compat/contact", &json!({"phone_number": phone}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_finds_every_connection_busy_is_refused_after_the_pool_wait() {
    use diesel_async::SimpleAsyncConnection;
    let app = TestApp::builder()
        .db_pool(2, std::time::Duration::from_millis(500))
        .spawn()
        .await;
    // The user key is read now, and cached: the calls below need a connection only for their
    // contact.
    assert_eq!(upsert(&app, "+4915112345670").await.status, 200);

    // Two upserts hold both connections, waiting for the contacts table; a third has none.
    let mut blocker = lock_table(&app.database, "contacts", "EXCLUSIVE").await;
    let calls = futures::future::join_all(
        ["+4915112345671", "+4915112345672", "+4915112345673"].map(|phone| upsert(&app, phone)),
    );
    let release_after_a_refusal = async {
        until_statements_wait_for_a_lock(&app.database, "%contacts%", 2).await;
        // The third call is refused while the lock is still held: it did not wait for it.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        blocker.batch_execute("COMMIT").await.expect("unlock");
    };
    let (replies, ()) = tokio::join!(calls, release_after_a_refusal);
    let mut statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503]);
    let refused = replies
        .iter()
        .find(|reply| reply.status == 503)
        .expect("one 503");
    assert!(refused.headers.contains_key("retry-after"), "{refused:?}");
    assert_eq!(
        refused.body["error"]["code"], "unavailable",
        "{}",
        refused.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_keys_cannot_take_the_connections_of_callers_whose_keys_are_known() {
    // Six connections: one key-store read at a time.
    let app = TestApp::builder()
        .db_pool(6, std::time::Duration::from_secs(3))
        .spawn()
        .await;
    let made_up = |n: usize| format!("sbk_{n:012x}_not-a-secret-anyone-was-given");
    let with_key = async |key: &str| {
        app.send(
            Method::POST,
            "/compat/contact",
            &[("x-api-key", key), ("content-type", "application/json")],
            CONTACT,
        )
        .await
    };
    // Known, and cached: the user key, and a made-up key already refused once.
    assert_eq!(upsert(&app, "+4915112345670").await.status, 200);
    assert_eq!(with_key(&made_up(0)).await.status, 401);

    // While the key store cannot be read, six callers with made-up keys wait for it...
    let mut blocker = lock_table(&app.database, "api_keys", "ACCESS EXCLUSIVE").await;
    let flood = futures::future::join_all((1..=6).map(|n| {
        let key = made_up(n);
        async move { with_key(&key).await }
    }));
    let known_callers = async {
        // (A read, not the last-used times' writer, which may wait for the table too.)
        until_statements_wait_for_a_lock(&app.database, "SELECT%api_keys%", 1).await;
        // (time for the other five to reach whatever they wait for)
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // ...and a caller whose key is known is served all the same, as is the made-up key
        // refused before, without a read.
        let served = upsert(&app, "+4915112345679").await;
        let refused_again = with_key(&made_up(0)).await;
        use diesel_async::SimpleAsyncConnection;
        blocker.batch_execute("COMMIT").await.expect("unlock");
        (served, refused_again)
    };
    let (flood, (served, refused_again)) = tokio::join!(flood, known_callers);
    assert_eq!(served.status, 200, "{}", served.text);
    assert_eq!(refused_again.status, 401, "{}", refused_again.text);
    for reply in flood {
        // Refused as unknown once the store could be read, or as unavailable after waiting
        // their turn for too long.
        assert!([401, 503].contains(&reply.status), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_core_does_not_answer_in_time_gets_a_504_in_its_familys_shape() {
    use diesel_async::SimpleAsyncConnection;
    let app = TestApp::builder()
        .request_timeout(std::time::Duration::from_secs(1))
        .spawn()
        .await;
    assert_eq!(upsert(&app, "+4915112345670").await.status, 200);
    let mut blocker = lock_table(&app.database, "contacts", "EXCLUSIVE").await;
    let (reply, ()) = tokio::join!(upsert(&app, "+4915112345671"), async {
        until_statements_wait_for_a_lock(&app.database, "%contacts%", 1).await;
        // Held well past the timeout: the answer must not wait for it.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        blocker.batch_execute("COMMIT").await.expect("unlock");
    });
    assert_eq!(reply.status, 504, "{}", reply.text);
    assert_eq!(reply.body["success"], false, "{}", reply.text);
    assert_eq!(
        reply.body["error"]["code"], "deadline_exceeded",
        "{}",
        reply.text
    );

    // Counted, with its status, as every routed request is.
    let metrics = app.send_anonymous(Method::GET, "/metrics", &[], "").await;
    let timed_out: f64 = metrics
        .text
        .lines()
        .filter(|line| {
            line.starts_with("switchbord_http_requests_total{")
                && line.contains("route=\"/compat/contact\"")
                && line.contains("status=\"504\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(timed_out >= 1.0, "{}", metrics.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_checks_from_anyone_cannot_take_the_connections_of_keyed_callers() {
    let app = TestApp::builder()
        .db_pool(4, std::time::Duration::from_millis(500))
        .spawn()
        .await;
    assert_eq!(upsert(&app, "+4915112345670").await.status, 200);

    // While the migrations table cannot be read, eight readiness checks wait for it...
    let mut blocker = lock_table(
        &app.database,
        "__diesel_schema_migrations",
        "ACCESS EXCLUSIVE",
    )
    .await;
    let flood = futures::future::join_all(
        (0..8).map(|_| app.send_anonymous(Method::GET, "/readyz", &[], "")),
    );
    let keyed_caller = async {
        until_statements_wait_for_a_lock(&app.database, "%__diesel_schema_migrations%", 1).await;
        // (time for the other seven to reach whatever they wait for)
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // ...and a caller whose key is known is served all the same.
        let served = upsert(&app, "+4915112345679").await;
        use diesel_async::SimpleAsyncConnection;
        blocker.batch_execute("COMMIT").await.expect("unlock");
        served
    };
    let (flood, served) = tokio::join!(flood, keyed_caller);
    assert_eq!(served.status, 200, "{}", served.text);
    for reply in flood {
        // Not ready by the check that could not finish, or ready by the one after the unlock.
        assert!([200, 503].contains(&reply.status), "{reply:?}");
    }
}
