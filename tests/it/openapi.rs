//! The OpenAPI document (`GET /openapi.json`) and the offline API reference (`GET /docs`).
//!
//! Completeness is checked against `switchbord_gateway::served_routes()`, the list the router
//! records as routes are registered (docs/openapi.md). An axum wildcard `{*name}` is documented
//! as the path parameter `{name}`; every other path, trailing-slash twins included, must appear
//! exactly as served.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use reqwest::Method;
use serde_json::{Value as Json, json};

use crate::helpers::TestApp;

/// The document, fetched without an API key (it needs none).
async fn fetch_document(app: &TestApp) -> Json {
    let reply = app
        .send_anonymous(Method::GET, "/openapi.json", &[], "")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{:?}",
        reply.headers
    );
    reply.body
}

/// `{*rest}` (axum's wildcard) → `{rest}` (an OpenAPI path parameter).
fn openapi_path(served: &str) -> String {
    served.replace("{*", "{")
}

fn documented_operations(document: &Json) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths is an object");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item is an object")
                .keys()
                .filter(|key| {
                    [
                        "get", "put", "post", "delete", "patch", "head", "options", "trace",
                    ]
                    .contains(&key.as_str())
                })
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// A concrete URL for a path template: every parameter filled with a harmless value.
fn sample_url(template: &str) -> String {
    let mut url = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').expect("a closed parameter") + start;
        url.push_str(&rest[..start]);
        let name = rest[start + 1..end].trim_start_matches('*');
        url.push_str(match name {
            // The docs UI answers an unknown asset with its own 404.
            "asset" => "swagger-ui.css",
            _ => "sample",
        });
        rest = &rest[end + 1..];
    }
    url.push_str(rest);
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn every_served_route_is_documented_and_every_documented_one_is_served() {
    let app = TestApp::spawn().await;
    let document = fetch_document(&app).await;
    let served: BTreeSet<(String, String)> = switchbord_gateway::served_routes()
        .into_iter()
        .map(|route| (route.method.to_string(), openapi_path(&route.path)))
        .collect();
    assert!(
        served.len() > 50,
        "the recorded routes look incomplete: {served:?}"
    );
    let documented = documented_operations(&document);

    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in /openapi.json (add #[utoipa::path] and list the handler in ApiDoc): \
         {undocumented:#?}"
    );
    assert!(
        not_served.is_empty(),
        "in /openapi.json but not served: {not_served:#?}"
    );
}

/// The recorded list is what axum routes: none of its entries meets the router's 404 or 405
/// (see `family::render_unrouted`). Requests carry no key and no body, so they stop at the body
/// check or the core's authentication.
#[tokio::test(flavor = "multi_thread")]
async fn every_recorded_route_reaches_a_handler() {
    let app = TestApp::spawn().await;
    for route in switchbord_gateway::served_routes() {
        let method = Method::from_bytes(route.method.as_str().as_bytes()).expect("a method");
        let url = sample_url(&route.path);
        let reply = app.send_anonymous(method, &url, &[], "").await;
        assert_ne!(
            reply.status, 405,
            "{} {url}: method not routed",
            route.method
        );
        assert!(
            !(reply.status == 404 && reply.text.contains("no route serves this path")),
            "{} {url}: path not routed",
            route.method
        );
    }
}

/// Every `$ref` in `value`, with where it was found.
fn collect_refs<'a>(value: &'a Json, at: String, refs: &mut Vec<(String, &'a str)>) {
    match value {
        Json::Object(object) => {
            for (key, child) in object {
                match (key.as_str(), child) {
                    ("$ref", Json::String(target)) => refs.push((at.clone(), target)),
                    _ => collect_refs(child, format!("{at}/{key}"), refs),
                }
            }
        }
        Json::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                collect_refs(child, format!("{at}/{index}"), refs);
            }
        }
        _ => {}
    }
}

fn template_parameters(path: &str) -> BTreeSet<String> {
    path.split('{')
        .skip(1)
        .filter_map(|part| part.split_once('}').map(|(name, _)| name.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_valid_openapi_3_1() {
    let app = TestApp::spawn().await;
    let document = fetch_document(&app).await;

    // A typed parse of the whole document by an OpenAPI 3.1 model.
    let spec = oas3::from_json(document.to_string()).expect("the document parses as OpenAPI 3.1");
    let version = spec
        .validate_version()
        .expect("a supported OpenAPI version");
    assert_eq!((version.major, version.minor), (3, 1), "{version}");
    let mut problems = Vec::new();
    let mut operation_ids = HashSet::new();
    let mut operations = 0;
    for (path, method, operation) in spec.operations() {
        operations += 1;
        let name = format!("{method} {path}");
        match &operation.operation_id {
            Some(id) if !operation_ids.insert(id.clone()) => {
                problems.push(format!("{name}: operationId {id} is not unique"));
            }
            Some(_) => {}
            None => problems.push(format!("{name}: no operationId")),
        }
        if let Err(error) = operation.request_body(&spec) {
            problems.push(format!("{name}: request body: {error}"));
        }
        let parameters = match operation.parameters(&spec) {
            Ok(parameters) => parameters,
            Err(error) => {
                problems.push(format!("{name}: parameters: {error}"));
                Vec::new()
            }
        };
        let declared: BTreeSet<String> = parameters
            .iter()
            .filter(|parameter| parameter.location == oas3::spec::ParameterIn::Path)
            .map(|parameter| parameter.name.clone())
            .collect();
        let in_template = template_parameters(&path);
        if declared != in_template {
            problems.push(format!(
                "{name}: path parameters declared {declared:?}, in the template {in_template:?}"
            ));
        }
        let responses = operation.responses(&spec);
        if !responses
            .keys()
            .any(|status| status.starts_with('2') || status.starts_with('3'))
        {
            problems.push(format!("{name}: no success response"));
        }
        // The docs UI answers a missing asset with a bare 404; API errors all have a body.
        for (status, response) in responses.iter().filter(|_| !path.starts_with("/docs")) {
            if status.starts_with('4') || status.starts_with('5') {
                let has_body = response
                    .content
                    .values()
                    .any(|media| media.schema.is_some());
                if !has_body {
                    problems.push(format!("{name}: {status} has no body schema"));
                }
            }
        }
    }
    assert!(operations > 50, "only {operations} operations");

    // Every reference points at something in the document.
    let mut refs = Vec::new();
    collect_refs(&document, String::new(), &mut refs);
    assert!(!refs.is_empty());
    for (at, target) in refs {
        let resolved = target
            .strip_prefix('#')
            .and_then(|pointer| document.pointer(pointer));
        if resolved.is_none() {
            problems.push(format!("{at}: $ref {target} does not resolve"));
        }
    }

    // The API key is a security scheme, as a header and as a bearer token.
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let used: BTreeSet<&str> = document["security"]
        .as_array()
        .expect("a global security requirement")
        .iter()
        .flat_map(|requirement| requirement.as_object().expect("an object").keys())
        .map(String::as_str)
        .collect();
    assert_eq!(used, BTreeSet::from(["api_key", "bearer"]));

    assert!(problems.is_empty(), "{problems:#?}");
}

/// Property names of the schema `name` in the document.
fn schema_properties(document: &Json, name: &str) -> BTreeSet<String> {
    document["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {name} with properties"))
        .keys()
        .cloned()
        .collect()
}

fn keys(body: &Json) -> BTreeSet<String> {
    body.as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"))
        .keys()
        .cloned()
        .collect()
}

/// The schemas describe bodies that handlers build with `json!`: a field added to one and not
/// the other shows up here.
#[tokio::test(flavor = "multi_thread")]
async fn documented_shapes_match_real_answers() {
    let app = TestApp::spawn().await;
    let document = fetch_document(&app).await;

    let compat_error = app.post_json("/compat/contact", &json!({})).await;
    assert_eq!(compat_error.status, 400, "{}", compat_error.text);
    assert_eq!(
        keys(&compat_error.body),
        schema_properties(&document, "CompatError")
    );
    assert_eq!(
        keys(&compat_error.body["error"]),
        schema_properties(&document, "CompatErrorDetail")
    );
    assert_eq!(
        keys(&compat_error.body["error"]["details"][0]),
        schema_properties(&document, "FieldViolation")
    );

    let legacy_error = app.put_json("/api/v1beta/contact/", &json!({})).await;
    assert_eq!(legacy_error.status, 400, "{}", legacy_error.text);
    assert_eq!(
        keys(&legacy_error.body),
        schema_properties(&document, "LegacyError")
    );

    let admin_error = app
        .send(
            Method::GET,
            "/api/v1/webhooks/endpoints/0193a5b2-7c1e-7f3a-9d2b-2f4c6e8a0b1c",
            &[("x-api-key", &app.keys.admin)],
            "",
        )
        .await;
    assert_eq!(admin_error.status, 404, "{}", admin_error.text);
    assert_eq!(
        keys(&admin_error.body),
        schema_properties(&document, "AdminError")
    );

    let contact = json!({
        "phone_number": "+4915112345678",
        "person_properties": {"name": "Jane Doe", "plan": "gold"}
    });
    let created = app.post_json("/compat/contact", &contact).await;
    assert_eq!(created.status, 200, "{}", created.text);
    assert_eq!(
        keys(&created.body),
        schema_properties(&document, "CompatContactUpserted")
    );
    assert_eq!(
        keys(&created.body["contact"]),
        schema_properties(&document, "Contact")
    );
    // Every field is answered, so every field is required.
    let required: BTreeSet<String> = document["components"]["schemas"]["Contact"]["required"]
        .as_array()
        .expect("required fields")
        .iter()
        .filter_map(|field| field.as_str().map(str::to_owned))
        .collect();
    assert_eq!(keys(&created.body["contact"]), required);
    // A field answered `null` (no email, no locale here) is documented as nullable.
    let contact_schema = &document["components"]["schemas"]["Contact"]["properties"];
    for (field, value) in created.body["contact"].as_object().expect("an object") {
        if value.is_null() {
            let schema = &contact_schema[field];
            let nullable = schema["type"]
                .as_array()
                .is_some_and(|types| types.contains(&json!("null")))
                || schema["oneOf"]
                    .as_array()
                    .is_some_and(|choices| choices.iter().any(|choice| choice["type"] == "null"));
            assert!(nullable, "Contact.{field} is answered null: {schema}");
        }
    }
    let updated = app.put_json("/api/v1beta/contact/", &contact).await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(
        keys(&updated.body),
        schema_properties(&document, "LegacyContactUpserted")
    );

    let triggered = app
        .post_json(
            "/compat/journey-trigger/welcome",
            &json!({"phone_number": "+4915112345678"}),
        )
        .await;
    assert_eq!(triggered.status, 200, "{}", triggered.text);
    assert_eq!(
        keys(&triggered.body),
        schema_properties(&document, "JourneyTriggered")
    );
}

/// `src="…"` and `href="…"` values in `html`.
fn referenced_urls(html: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attribute in ["src=\"", "href=\"", "src='", "href='"] {
        let quote = &attribute[attribute.len() - 1..];
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            let value = &rest[start + attribute.len()..];
            let end = value.find(quote).expect("a closed attribute");
            urls.push(value[..end].to_owned());
            rest = &value[end..];
        }
    }
    urls
}

/// URLs in `text` that a browser could be sent to on another host.
fn external_urls(text: &str) -> Vec<String> {
    ["http://", "https://", "//"]
        .iter()
        .flat_map(|scheme| text.match_indices(scheme).map(|(at, _)| at))
        .filter(|at| {
            // `//` alone counts only as a protocol-relative URL in a quoted or url() reference.
            text[..*at].ends_with(['"', '\'', '(']) || text[*at..].starts_with("http")
        })
        .map(|at| text[at..].chars().take(80).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_reference_is_served_offline() {
    let app = TestApp::spawn().await;

    // `/docs` redirects to `/docs/` (Swagger UI's assets are relative to it); no key needed.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
        .get(app.url("/docs"))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(redirect.status(), 303);
    assert_eq!(redirect.headers()["location"], "/docs/");

    let page = app.send_anonymous(Method::GET, "/docs", &[], "").await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(
        page.header("content-type")
            .is_some_and(|value| value.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(page.text.contains("swagger-ui"), "{}", page.text);
    assert_eq!(external_urls(&page.text), Vec::<String>::new());

    let references = referenced_urls(&page.text);
    assert!(
        references.iter().any(|url| url.ends_with(".js")),
        "{references:?}"
    );
    let mut fetched = BTreeMap::new();
    for reference in &references {
        assert!(
            !reference.contains("://") && !reference.starts_with("//"),
            "the page loads {reference} from another host"
        );
        let path = match reference.strip_prefix("./") {
            Some(relative) => format!("/docs/{relative}"),
            None if reference.starts_with('/') => reference.clone(),
            None => format!("/docs/{reference}"),
        };
        let asset = app.send_anonymous(Method::GET, &path, &[], "").await;
        assert_eq!(asset.status, 200, "{path}");
        fetched.insert(path, asset.text);
    }

    // The style sheets load nothing from elsewhere (inline `data:` images are fine).
    for (path, text) in fetched.iter().filter(|(path, _)| path.ends_with(".css")) {
        let loaded: Vec<&str> = text
            .split("url(")
            .skip(1)
            .map(|reference| reference.trim_start_matches(['"', '\'']))
            .map(|reference| reference.split(')').next().unwrap_or(reference))
            .filter(|reference| !reference.starts_with("data:"))
            .filter(|reference| reference.starts_with("//") || reference.contains("://"))
            .collect();
        assert!(loaded.is_empty(), "{path} loads {loaded:?}");
    }
    // The initializer (the page's own script) points Swagger UI at our document, turns the
    // online validator off, and names no other host.
    let initializer = fetched
        .get("/docs/swagger-initializer.js")
        .expect("the page loads swagger-initializer.js");
    assert!(initializer.contains("\"/openapi.json\""), "{initializer}");
    assert!(
        initializer.contains("\"validatorUrl\": \"none\""),
        "{initializer}"
    );
    assert_eq!(external_urls(initializer), Vec::<String>::new());
}
