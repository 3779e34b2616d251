//! 100 requests per minute per client IP on the compat and legacy paths (SPEC §2).

use reqwest::Method;

use crate::helpers::{HttpReply, TestApp};

const CONTACT: &str = r#"{"phone_number": "+4915112345678"}"#;

async fn post_from(app: &TestApp, forwarded_for: Option<&str>) -> HttpReply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(address) = forwarded_for {
        headers.push(("x-forwarded-for", address));
    }
    app.send(Method::POST, "/compat/contact", &headers, CONTACT)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_101st_request_in_a_minute_is_429_with_retry_after() {
    let app = TestApp::builder().rate_limit_per_minute(100).spawn().await;

    // The bucket holds 100 and refills one request every 600 ms, so requests sent while the
    // first 100 are in flight may earn a few more; the first refusal must come at 100 plus
    // what the elapsed time refilled.
    let started = std::time::Instant::now();
    let mut accepted = 0_u64;
    let limited = loop {
        let reply = post_from(&app, None).await;
        if reply.status != 200 {
            break reply;
        }
        accepted += 1;
        assert!(accepted <= 200, "no 429 after {accepted} requests");
    };
    let refilled = started.elapsed().as_millis() as u64 / 600 + 1;
    assert!(
        (100..=100 + refilled).contains(&accepted),
        "{accepted} accepted, expected 100 (+{refilled} refilled)"
    );
    assert_eq!(limited.status, 429);
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.body["error"]["code"], "rate_limited");
    assert_eq!(
        limited.body["request_id"],
        limited.header("x-request-id").expect("id")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = TestApp::builder().rate_limit_per_minute(5).spawn().await;

    for attempt in 0..5 {
        // A different spoofed address each time must not buy a fresh bucket.
        let spoofed = format!("203.0.113.{attempt}");
        assert_eq!(post_from(&app, Some(&spoofed)).await.status, 200);
    }

    assert_eq!(post_from(&app, Some("198.51.100.1")).await.status, 429);
    let legacy = app
        .send(Method::PUT, "/api/v1beta/contact/", &[], CONTACT)
        .await;
    assert_eq!(legacy.status, 429, "the limit spans both families");
    assert_eq!(legacy.body["status"], "error");
    assert!(legacy.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_from_a_trusted_proxy_names_the_client() {
    let app = TestApp::builder()
        .rate_limit_per_minute(5)
        .trusted_proxies(&["127.0.0.1/32"])
        .spawn()
        .await;

    for _ in 0..5 {
        assert_eq!(post_from(&app, Some("203.0.113.1")).await.status, 200);
    }
    let same_client = post_from(&app, Some("203.0.113.1")).await;
    let other_client = post_from(&app, Some("203.0.113.2")).await;

    assert_eq!(same_client.status, 429);
    assert_eq!(other_client.status, 200, "{}", other_client.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_not_rate_limited() {
    let app = TestApp::builder().rate_limit_per_minute(1).spawn().await;

    for _ in 0..5 {
        assert_eq!(app.send(Method::GET, "/healthz", &[], "").await.status, 200);
    }
}
