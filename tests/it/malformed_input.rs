//! No input, however malformed, produces a 500: a few hundred random, truncated and mistyped
//! bodies, generated from a fixed seed so that a failure can be reproduced.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value as Json, json};

use crate::helpers::TestApp;

const VALID: &str = r#"{"phone_number":"+4915112345678","external_reference_id":"crm-4711","source_type":"internal","person_properties":{"name":"Jane Doe","email":"jane@example.com","locale":"de-DE","plan":"gold"},"tags":["vip"],"first_name":"Jane","last_name":"Doe","custom_properties":{"x":1},"phone":"+4915112345678","event_name":"order_placed","payload":{"a":1},"contact":{"phone":"+4915112345678"},"data":{"coupon":"X1"},"flow_id":"f","trigger_id":"t","voucher_pool":"v"}"#;

fn odd_values(rng: &mut StdRng) -> Json {
    match rng.random_range(0..10) {
        0 => Json::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => json!("\u{0000}\u{202e}😀"),
        5 => json!([1, "a", null, {"b": []}]),
        6 => json!({"nested": {"deeper": [[[[]]]]}}),
        7 => json!("x".repeat(rng.random_range(0..2000))),
        8 => json!(""),
        _ => json!("+49 (0) 151-123"),
    }
}

fn bodies() -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut bodies: Vec<String> = (0..VALID.len())
        .step_by(2)
        .map(|end| VALID[..end].to_owned())
        .collect();
    let fields = [
        "phone_number",
        "phone",
        "external_reference_id",
        "source_type",
        "person_properties",
        "custom_properties",
        "first_name",
        "last_name",
        "tags",
    ];
    let valid: Json = serde_json::from_str(VALID).expect("valid json");
    for _ in 0..150 {
        let mut body = valid.clone();
        for field in fields {
            if rng.random_bool(0.3) {
                body[field] = odd_values(&mut rng);
            }
        }
        if rng.random_bool(0.3) {
            body["person_properties"] = json!({"email": odd_values(&mut rng), "locale": odd_values(&mut rng), "name": odd_values(&mut rng), "": 1});
        }
        bodies.push(body.to_string());
    }
    for _ in 0..60 {
        let length = rng.random_range(0..200);
        let bytes: Vec<u8> = (0..length).map(|_| rng.random::<u8>()).collect();
        bodies.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    bodies
}

#[tokio::test(flavor = "multi_thread")]
async fn no_body_produces_a_server_error() {
    let app = TestApp::spawn().await;
    let all = bodies();
    assert!(all.len() >= 300, "{}", all.len());

    for chunk in all.chunks(16) {
        let replies = futures::future::join_all(chunk.iter().enumerate().map(|(index, body)| {
            let (method, path) = match index % 5 {
                0 => (Method::POST, "/compat/contact"),
                1 => (Method::PUT, "/api/v1beta/contact/"),
                2 => (Method::POST, "/compat/journey-trigger/welcome"),
                3 => (
                    Method::POST,
                    "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/t-1",
                ),
                _ => (
                    Method::POST,
                    "/api/v0/webhooks/incoming/emarsys/custom_external_event",
                ),
            };
            app.send(
                method,
                path,
                &[("content-type", "application/json")],
                body.clone(),
            )
        }))
        .await;
        for (body, reply) in chunk.iter().zip(replies) {
            assert!(
                reply.status < 500,
                "{} for {body:?}: {}",
                reply.status,
                reply.text
            );
            assert!(
                reply.body.is_object(),
                "non-JSON reply for {body:?}: {}",
                reply.text
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_data_and_unstorable_ids_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let deep = crate::contact_validation::nested_arrays(25);
    let cases = [
        (
            "/compat/journey-trigger/welcome",
            json!({"phone_number": "+4915112345678", "data": {"x": deep}}),
            "data",
        ),
        (
            "/api/v0/webhooks/incoming/emarsys/custom_external_event",
            json!({"event_name": "order_placed", "phone": "+4915112345678", "payload": {"x": deep}}),
            "payload",
        ),
        (
            "/api/v0/webhooks/incoming/emarsys/custom_external_event",
            json!({"event_name": "order_placed", "phone": "+4915112345678", "event_id": "a\u{0}b"}),
            "event_id",
        ),
        (
            "/api/v0/webhooks/incoming/emarsys/custom_external_event",
            json!({"event_name": "order_placed", "phone": "+4915112345678", "event_id": "e".repeat(3000)}),
            "event_id",
        ),
    ];
    for (path, body, field) in cases {
        let reply = app.post_json(path, &body).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        // /compat answers {"error": {"field"}}, the legacy Emarsys path {"field"}.
        let named = reply.body["error"]["field"]
            .as_str()
            .or(reply.body["field"].as_str());
        assert_eq!(named, Some(field), "{path}: {}", reply.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_segment_that_is_not_utf8_is_named_in_the_familys_error_shape() {
    let app = TestApp::spawn().await;
    let body = json!({"phone_number": "+4915112345678"}).to_string();
    let cases = [
        (
            Method::POST,
            "/webhooks/v0/rest-trigger/organization/%FF/flow/welcome/trigger/",
            "org",
        ),
        (
            Method::POST,
            "/webhooks/v0/rest-trigger/organization/acme/flow/welcome/trigger/t-%C3%28/",
            "trigger_id",
        ),
        (
            Method::POST,
            "/compat/journey-trigger/welcome/%FF",
            "legacy_path",
        ),
        (Method::GET, "/api/v1/admin/flows/%FF", "id"),
    ];
    for (method, path, field) in cases {
        let admin_key = app.keys.admin.clone();
        let reply = app
            .send(method, path, &[("x-api-key", &admin_key)], body.clone())
            .await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        let request_id = reply.headers["x-request-id"].to_str().expect("request id");
        assert_eq!(
            reply.body["request_id"], request_id,
            "{path}: {}",
            reply.text
        );
        // Legacy {"status": "error", "field"}, compat {"error": {"field"}}, admin {"details"}.
        let named = reply.body["field"]
            .as_str()
            .or(reply.body["error"]["field"].as_str())
            .or(reply.body["details"][0]["field"].as_str());
        assert_eq!(named, Some(field), "{path}: {}", reply.text);
    }
}
