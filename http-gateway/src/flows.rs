//! Operator routes for flows and event rules: REST mappings of `FlowService` under
//! `/api/v1/admin/`.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::{Map, Value as Json, json};
use switchbord_api::json::{
    MAX_NESTING, NESTING_PROBLEM, json_from_value, nesting, value_from_json,
};
use switchbord_api::v1::property_assignment::Source;
use switchbord_api::v1::{
    DeleteEventRuleRequest, DeleteFlowRequest, EventRule, Flow, GetEventRuleRequest,
    GetFlowRequest, ListEventRulesRequest, ListFlowsRequest, PropertyAssignment,
    PutEventRuleRequest, PutFlowRequest,
};

use crate::body::read_json_object;
use crate::call::CallContext;
use crate::core_client::CoreClient;
use crate::decode::Decoder;
use crate::error::ApiError;
use crate::openapi::responses::{AdminBodyTooLarge, AdminErrors};
use crate::openapi::schemas;
use crate::page::PageQuery;
use crate::path::Path;
use crate::time::rfc3339;

fn flow_json(flow: Flow) -> Json {
    json!({
        "id": flow.id,
        "org": flow.org,
        "name": flow.name,
        "enabled": flow.enabled,
        "event_names": flow.event_names,
        "created_at": flow.created_at.map(rfc3339),
        "updated_at": flow.updated_at.map(rfc3339),
    })
}

fn rule_json(rule: EventRule) -> Json {
    let properties: Vec<Json> = rule
        .set_properties
        .into_iter()
        .map(|assignment| match assignment.source {
            Some(Source::FromPayload(pointer)) => {
                json!({"property": assignment.property, "from_payload": pointer})
            }
            Some(Source::Value(value)) => {
                json!({"property": assignment.property, "value": json_from_value(value)})
            }
            None => json!({"property": assignment.property}),
        })
        .collect();
    json!({
        "event_name": rule.event_name,
        "add_tags": rule.add_tags,
        "remove_tags": rule.remove_tags,
        "set_properties": properties,
        "created_at": rule.created_at.map(rfc3339),
        "updated_at": rule.updated_at.map(rfc3339),
    })
}

fn decode_flow(id: String, mut body: Map<String, Json>) -> Result<Flow, ApiError> {
    let mut decoder = Decoder::default();
    let flow = Flow {
        id,
        org: decoder.string(&mut body, "org").unwrap_or_default(),
        name: decoder.string(&mut body, "name").unwrap_or_default(),
        enabled: match body.remove("enabled") {
            None | Some(Json::Null) => true,
            Some(Json::Bool(enabled)) => enabled,
            Some(_) => return Err(ApiError::invalid_field("enabled", "must be a boolean")),
        },
        event_names: decoder
            .string_list(&mut body, "event_names")
            .unwrap_or_default(),
        ..Default::default()
    };
    decoder.finish(flow)
}

fn decode_rule(event_name: String, mut body: Map<String, Json>) -> Result<EventRule, ApiError> {
    let mut decoder = Decoder::default();
    let add_tags = decoder
        .string_list(&mut body, "add_tags")
        .unwrap_or_default();
    let remove_tags = decoder
        .string_list(&mut body, "remove_tags")
        .unwrap_or_default();
    let mut set_properties = Vec::new();
    match body.remove("set_properties") {
        None | Some(Json::Null) => {}
        Some(Json::Array(items)) => {
            for (index, item) in items.into_iter().enumerate() {
                let field = format!("set_properties[{index}]");
                let Json::Object(mut item) = item else {
                    return Err(ApiError::invalid_field(field, "must be an object"));
                };
                let property = match item.remove("property") {
                    Some(Json::String(property)) => property,
                    _ => {
                        return Err(ApiError::invalid_field(
                            format!("{field}.property"),
                            "must be a string",
                        ));
                    }
                };
                let source = match (item.remove("value"), item.remove("from_payload")) {
                    // The core would refuse it by name too, but a value nested past protobuf's
                    // own limit would not reach it: its decoding fails first, without a field.
                    (Some(value), None) if 1 + nesting(&value) > MAX_NESTING => {
                        return Err(ApiError::invalid_field(
                            format!("{field}.value"),
                            NESTING_PROBLEM,
                        ));
                    }
                    (Some(value), None) => Source::Value(value_from_json(value)),
                    (None, Some(Json::String(pointer))) => Source::FromPayload(pointer),
                    _ => {
                        return Err(ApiError::invalid_field(
                            field,
                            "needs exactly one of value or from_payload (a string)",
                        ));
                    }
                };
                set_properties.push(PropertyAssignment {
                    property,
                    source: Some(source),
                });
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "set_properties",
                "must be an array",
            ));
        }
    }
    decoder.finish(EventRule {
        event_name,
        add_tags,
        remove_tags,
        set_properties,
        ..Default::default()
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/flows",
    tag = "flows",
    summary = "Lists flows",
    params(PageQuery),
    responses(
        (status = 200, description = "OK.", body = schemas::FlowList),
        AdminErrors,
    )
)]
pub async fn list_flows(
    State(core): State<CoreClient>,
    context: CallContext,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let query = PageQuery::read(query.as_deref())?;
        let page = core
            .flows()
            .list_flows(context.grpc_request(ListFlowsRequest {
                page_size: query.page_size,
                page_token: query.page_token,
            }))
            .await?
            .into_inner();
        Ok(json!({
            "flows": page.flows.into_iter().map(flow_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/flows/{id}",
    tag = "flows",
    summary = "Shows a flow",
    params(
        ("id" = String, Path, description = "Id of the flow."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::Flow),
        AdminErrors,
    )
)]
pub async fn get_flow(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let flow = core
            .flows()
            .get_flow(context.grpc_request(GetFlowRequest { id }))
            .await?
            .into_inner()
            .flow;
        Ok(flow.map(flow_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    put,
    path = "/api/v1/admin/flows/{id}",
    tag = "flows",
    summary = "Creates or replaces a flow",
    params(
        ("id" = String, Path, description = "Id of the flow."),
    ),
    request_body(content = schemas::FlowInput, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "The stored flow.", body = schemas::Flow),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn put_flow(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let flow = decode_flow(id, read_json_object(body).await?)?;
        let stored = core
            .flows()
            .put_flow(context.grpc_request(PutFlowRequest { flow: Some(flow) }))
            .await?
            .into_inner()
            .flow;
        Ok(stored.map(flow_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    delete,
    path = "/api/v1/admin/flows/{id}",
    tag = "flows",
    summary = "Deletes a flow",
    params(
        ("id" = String, Path, description = "Id of the flow."),
    ),
    responses(
        (status = 200, description = "Deleted.", body = schemas::Empty),
        AdminErrors,
    )
)]
pub async fn delete_flow(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        core.flows()
            .delete_flow(context.grpc_request(DeleteFlowRequest { id }))
            .await?;
        Ok(json!({}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/event-rules",
    tag = "event-rules",
    summary = "Lists event rules",
    params(PageQuery),
    responses(
        (status = 200, description = "OK.", body = schemas::EventRuleList),
        AdminErrors,
    )
)]
pub async fn list_rules(
    State(core): State<CoreClient>,
    context: CallContext,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let query = PageQuery::read(query.as_deref())?;
        let page = core
            .flows()
            .list_event_rules(context.grpc_request(ListEventRulesRequest {
                page_size: query.page_size,
                page_token: query.page_token,
            }))
            .await?
            .into_inner();
        Ok(json!({
            "rules": page.rules.into_iter().map(rule_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/event-rules/{event_name}",
    tag = "event-rules",
    summary = "Shows an event rule",
    params(
        ("event_name" = String, Path, description = "The event name the rule applies to."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::EventRule),
        AdminErrors,
    )
)]
pub async fn get_rule(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(event_name): Path<String>,
) -> Response {
    let result = async {
        let rule = core
            .flows()
            .get_event_rule(context.grpc_request(GetEventRuleRequest { event_name }))
            .await?
            .into_inner()
            .rule;
        Ok(rule.map(rule_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    put,
    path = "/api/v1/admin/event-rules/{event_name}",
    tag = "event-rules",
    summary = "Creates or replaces an event rule",
    params(
        ("event_name" = String, Path, description = "The event name the rule applies to."),
    ),
    request_body(content = schemas::EventRuleInput, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "The stored rule.", body = schemas::EventRule),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn put_rule(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(event_name): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let rule = decode_rule(event_name, read_json_object(body).await?)?;
        let stored = core
            .flows()
            .put_event_rule(context.grpc_request(PutEventRuleRequest { rule: Some(rule) }))
            .await?
            .into_inner()
            .rule;
        Ok(stored.map(rule_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    delete,
    path = "/api/v1/admin/event-rules/{event_name}",
    tag = "event-rules",
    summary = "Deletes an event rule",
    params(
        ("event_name" = String, Path, description = "The event name the rule applies to."),
    ),
    responses(
        (status = 200, description = "Deleted.", body = schemas::Empty),
        AdminErrors,
    )
)]
pub async fn delete_rule(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(event_name): Path<String>,
) -> Response {
    let result = async {
        core.flows()
            .delete_event_rule(context.grpc_request(DeleteEventRuleRequest { event_name }))
            .await?;
        Ok(json!({}))
    }
    .await;
    context.admin_response(result)
}
