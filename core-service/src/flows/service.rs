//! The `FlowService` gRPC implementation.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use switchbord_api::v1::flow_service_server::FlowService;
use switchbord_api::v1::*;
use tonic::{Request, Response, Status};

use super::model::{
    EventRuleRow, FlowRow, flow_from_proto, flow_id_to_find, flow_to_proto, rule_from_proto,
    rule_name_to_find, rule_to_proto,
};
use super::store::{self, Bounded};
use crate::audit::{self, AuditRecord};
use crate::config_watch::ConfigWatch;
use crate::db::{self, DbError, DbPool};
use crate::error::{FieldViolation, ServiceError};
use crate::outbox::BoxFuture;
use crate::pagination::{self, NamePage};
use crate::request::RequestContext;
use crate::schema::{event_rules, flows};

pub struct FlowsGrpc {
    pool: DbPool,
    /// Told of every change (see [`crate::config_watch`]).
    config: ConfigWatch,
}

impl FlowsGrpc {
    pub fn new(pool: DbPool, config: ConfigWatch) -> Self {
        Self { pool, config }
    }

    /// Runs `write` and its audit entry, naming the fields `write` answers it changed, in one
    /// transaction, then marks the cached flows and rules stale.
    async fn audited<T: Send>(
        &self,
        context: &RequestContext,
        action: &'static str,
        target_type: &'static str,
        target_id: String,
        write: impl for<'c> FnOnce(
            &'c mut AsyncPgConnection,
        ) -> BoxFuture<'c, QueryResult<(T, Vec<&'static str>)>>
        + Send,
    ) -> Result<T, Status> {
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let entry = AuditRecord::new(context, action, target_type).target(target_id);
        let written = audit::audited_changes(&mut connection, entry, write)
            .await
            .map_err(db_status)?;
        self.config.changed();
        Ok(written)
    }
}

fn db_status(error: impl Into<DbError>) -> Status {
    ServiceError::from(error.into()).into()
}

fn invalid(violations: Vec<FieldViolation>) -> Status {
    ServiceError::InvalidArgument(violations).into()
}

/// A new flow or rule beyond its bound: one has to go before another comes.
fn too_many(bounded: Bounded) -> Status {
    ServiceError::FailedPrecondition(format!(
        "at most {} {} can be configured; delete one first",
        bounded.bound(),
        bounded.name()
    ))
    .into()
}

fn not_found(what: &'static str) -> Status {
    ServiceError::NotFound(what).into()
}

/// A delete that found nothing fails inside the audited transaction, so that no audit entry
/// records a deletion that did not happen.
fn nothing_deleted_rolls_back(deleted: usize) -> QueryResult<((), Vec<&'static str>)> {
    if deleted == 0 {
        Err(diesel::result::Error::NotFound)
    } else {
        Ok(((), Vec::new()))
    }
}

/// The not-found of a delete, naming what was not found.
fn named_not_found(status: Status, what: &'static str) -> Status {
    if status.code() == tonic::Code::NotFound {
        not_found(what)
    } else {
        status
    }
}

#[tonic::async_trait]
impl FlowService for FlowsGrpc {
    async fn put_flow(
        &self,
        request: Request<PutFlowRequest>,
    ) -> Result<Response<PutFlowResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let flow = request.into_inner().flow.unwrap_or_default();
        let row = flow_from_proto(flow, Utc::now()).map_err(invalid)?;
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        if store::one_more_would_exceed(&mut connection, Bounded::Flows, &row.id)
            .await
            .map_err(db_status)?
        {
            return Err(too_many(Bounded::Flows));
        }
        drop(connection);
        let stored = self
            .audited(
                &context,
                "flow.put",
                "flow",
                row.id.clone(),
                move |connection| Box::pin(async move { store::put_flow(connection, &row).await }),
            )
            .await?;
        Ok(Response::new(PutFlowResponse {
            flow: Some(flow_to_proto(stored)),
        }))
    }

    async fn get_flow(
        &self,
        request: Request<GetFlowRequest>,
    ) -> Result<Response<GetFlowResponse>, Status> {
        let id = flow_id_to_find(&request.get_ref().id).map_err(invalid)?;
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let flow: Option<FlowRow> = flows::table
            .find(id)
            .select(FlowRow::as_select())
            .first(&mut connection)
            .await
            .optional()
            .map_err(db_status)?;
        let flow = flow.ok_or_else(|| not_found("flow"))?;
        Ok(Response::new(GetFlowResponse {
            flow: Some(flow_to_proto(flow)),
        }))
    }

    async fn list_flows(
        &self,
        request: Request<ListFlowsRequest>,
    ) -> Result<Response<ListFlowsResponse>, Status> {
        let page = NamePage::of(request.get_ref().page_size, &request.get_ref().page_token)
            .map_err(|violation| invalid(vec![violation]))?;
        let mut query = flows::table
            .select(FlowRow::as_select())
            .order(flows::id)
            .limit(page.size + 1)
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(flows::id.gt(after));
        }
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let rows: Vec<FlowRow> = query.load(&mut connection).await.map_err(db_status)?;
        let (flows, next_page_token) =
            pagination::finish_page(rows, page.size, |flow| flow.id.clone(), flow_to_proto);
        Ok(Response::new(ListFlowsResponse {
            flows,
            next_page_token,
        }))
    }

    async fn delete_flow(
        &self,
        request: Request<DeleteFlowRequest>,
    ) -> Result<Response<DeleteFlowResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let id = flow_id_to_find(&request.into_inner().id).map_err(invalid)?;
        self.audited(&context, "flow.delete", "flow", id.clone(), |connection| {
            Box::pin(async move {
                let deleted = diesel::delete(flows::table.find(id.clone()))
                    .execute(connection)
                    .await?;
                nothing_deleted_rolls_back(deleted)
            })
        })
        .await
        .map_err(|status| named_not_found(status, "flow"))?;
        Ok(Response::new(DeleteFlowResponse {}))
    }

    async fn put_event_rule(
        &self,
        request: Request<PutEventRuleRequest>,
    ) -> Result<Response<PutEventRuleResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let rule = request.into_inner().rule.unwrap_or_default();
        let row = rule_from_proto(rule, Utc::now()).map_err(invalid)?;
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        if store::one_more_would_exceed(&mut connection, Bounded::EventRules, &row.event_name)
            .await
            .map_err(db_status)?
        {
            return Err(too_many(Bounded::EventRules));
        }
        drop(connection);
        let stored = self
            .audited(
                &context,
                "event_rule.put",
                "event_rule",
                row.event_name.clone(),
                move |connection| Box::pin(async move { store::put_rule(connection, &row).await }),
            )
            .await?;
        Ok(Response::new(PutEventRuleResponse {
            rule: Some(rule_to_proto(stored)),
        }))
    }

    async fn get_event_rule(
        &self,
        request: Request<GetEventRuleRequest>,
    ) -> Result<Response<GetEventRuleResponse>, Status> {
        let event_name = rule_name_to_find(&request.get_ref().event_name).map_err(invalid)?;
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let rule = store::rule_for(&mut connection, &event_name)
            .await
            .map_err(db_status)?
            .ok_or_else(|| not_found("event rule"))?;
        Ok(Response::new(GetEventRuleResponse {
            rule: Some(rule_to_proto(rule)),
        }))
    }

    async fn list_event_rules(
        &self,
        request: Request<ListEventRulesRequest>,
    ) -> Result<Response<ListEventRulesResponse>, Status> {
        let page = NamePage::of(request.get_ref().page_size, &request.get_ref().page_token)
            .map_err(|violation| invalid(vec![violation]))?;
        let mut query = event_rules::table
            .select(EventRuleRow::as_select())
            .order(event_rules::event_name)
            .limit(page.size + 1)
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(event_rules::event_name.gt(after));
        }
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let rows: Vec<EventRuleRow> = query.load(&mut connection).await.map_err(db_status)?;
        let (rules, next_page_token) = pagination::finish_page(
            rows,
            page.size,
            |rule| rule.event_name.clone(),
            rule_to_proto,
        );
        Ok(Response::new(ListEventRulesResponse {
            rules,
            next_page_token,
        }))
    }

    async fn delete_event_rule(
        &self,
        request: Request<DeleteEventRuleRequest>,
    ) -> Result<Response<DeleteEventRuleResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let event_name = rule_name_to_find(&request.into_inner().event_name).map_err(invalid)?;
        self.audited(
            &context,
            "event_rule.delete",
            "event_rule",
            event_name.clone(),
            |connection| {
                Box::pin(async move {
                    let deleted = diesel::delete(event_rules::table.find(event_name.clone()))
                        .execute(connection)
                        .await?;
                    nothing_deleted_rolls_back(deleted)
                })
            },
        )
        .await
        .map_err(|status| named_not_found(status, "event rule"))?;
        Ok(Response::new(DeleteEventRuleResponse {}))
    }
}
