//! E.164 normalisation (SPEC §2.1), through the real HTTP path.

use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn every_normalisation_rule_yields_e164() {
    let app = TestApp::spawn().await;
    let cases = [
        ("+4915112345678", "+4915112345678"),
        ("+49 151 12345678", "+4915112345678"),
        ("+49-151-1234-5678", "+4915112345678"),
        ("+49.151.123.456.78", "+4915112345678"),
        ("+49 (151) 12345678", "+4915112345678"),
        ("004915112345678", "+4915112345678"),
        ("491573758431", "+491573758431"),
        ("4915112345678", "+4915112345678"),
        (" +1 (415) 555-2671 ", "+14155552671"),
    ];
    for (sent, expected) in cases {
        let reply = app
            .post_json("/compat/contact", &json!({"phone_number": sent}))
            .await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.text);
        assert_eq!(reply.body["contact"]["phone_number"], expected, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn national_number_is_refused_without_a_default_region() {
    let app = TestApp::spawn().await;

    let reply = app
        .post_json("/compat/contact", &json!({"phone_number": "0151 12345678"}))
        .await;

    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.body["error"]["field"], "phone_number");
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("region")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn national_number_is_read_in_the_default_region() {
    let app = TestApp::builder().default_region("DE").spawn().await;

    let reply = app
        .post_json("/compat/contact", &json!({"phone_number": "0151 12345678"}))
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["contact"]["phone_number"], "+4915112345678");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_numbers_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        json!({"phone_number": "+49abc5112345"}),
        json!({"phone_number": "call me"}),
        json!({"phone_number": "+49123"}),
        json!({"phone_number": "12"}),
        json!({"phone_number": "+4915112345678901234"}),
        json!({"phone_number": "+999123456789"}),
        json!({"phone_number": ""}),
        json!({"phone_number": "   "}),
        json!({"phone_number": null}),
        json!({}),
        json!({"phone_number": 4915112345678_u64}),
        json!({"phone_number": true}),
        json!({"phone_number": ["+4915112345678"]}),
        json!({"phone_number": {"number": "+4915112345678"}}),
    ];
    for body in cases {
        let reply = app.post_json("/compat/contact", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["field"], "phone_number",
            "{body}: {}",
            reply.text
        );
        assert_eq!(reply.body["error"]["code"], "invalid_argument");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_prefix_after_the_country_code_names_the_same_contact() {
    let app = TestApp::spawn().await;
    let created = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "+4915112345678"}),
        )
        .await;
    let again = app
        .post_json(
            "/compat/contact",
            &json!({"phone_number": "+49 (0)151 12345678", "first_name": "Ada"}),
        )
        .await;

    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["operation"], "updated", "{}", again.text);
    assert_eq!(again.body["contact"]["id"], created.body["contact"]["id"]);
    assert_eq!(again.body["contact"]["phone_number"], "+4915112345678");
}
