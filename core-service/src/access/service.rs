//! The `AccessService` gRPC implementation.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use switchbord_api::v1::access_service_server::AccessService;
use switchbord_api::v1::{self, *};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::audit_log;
use super::authenticate::Authenticator;
use super::error::AccessError;
use super::role::Role;
use super::store::{self, ApiKeyRow, NewKey};
use crate::contacts::timestamp;
use crate::db::{self, DbPool};
use crate::error::{FieldViolation, ServiceError};
use crate::pagination;
use crate::request::RequestContext;
use crate::validation::{STORABLE_TIME, storable_time};

pub struct AccessGrpc {
    pool: DbPool,
    authenticator: Arc<Authenticator>,
}

impl AccessGrpc {
    pub fn new(pool: DbPool, authenticator: Arc<Authenticator>) -> Self {
        Self {
            pool,
            authenticator,
        }
    }
}

fn status(error: impl Into<ServiceError>) -> Status {
    error.into().into()
}

pub fn api_key_proto(row: ApiKeyRow) -> ApiKey {
    ApiKey {
        id: row.id.to_string(),
        role: row
            .role()
            .map_or(v1::Role::Unspecified, Role::to_proto)
            .into(),
        name: row.name,
        prefix: row.prefix,
        created_at: Some(timestamp(row.created_at)),
        created_by: row.created_by.map(|id| id.to_string()).unwrap_or_default(),
        expires_at: row.expires_at.map(timestamp),
        last_used_at: row.last_used_at.map(timestamp),
        revoked_at: row.revoked_at.map(timestamp),
    }
}

pub fn datetime(field: &str, value: prost_types::Timestamp) -> Result<DateTime<Utc>, AccessError> {
    storable_time(value.seconds, value.nanos)
        .ok_or_else(|| AccessError::invalid(field, STORABLE_TIME))
}

#[tonic::async_trait]
impl AccessService for AccessGrpc {
    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let body = request.into_inner();
        let role = Role::from_proto(body.role()).ok_or_else(|| {
            status(AccessError::invalid(
                "role",
                "must be admin, manager or user",
            ))
        })?;
        let expires_at = body
            .expires_at
            .map(|value| datetime("expires_at", value))
            .transpose()
            .map_err(status)?;
        let new = NewKey {
            name: body.name,
            role,
            expires_at,
            custom_secret: None,
        };
        let mut connection = db::connection(&self.pool).await.map_err(status)?;
        let (row, secret) = store::create_key(
            &mut connection,
            self.authenticator.hasher(),
            new,
            &context.caller,
            context.request_id,
        )
        .await
        .map_err(status)?;
        // Not known before it was created: nothing cached may say so.
        self.authenticator.forget(&row.prefix);
        tracing::info!(key_id = %row.id, prefix = %row.prefix, role = %row.role, "API key created");
        Ok(Response::new(CreateApiKeyResponse {
            api_key: Some(api_key_proto(row)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let body = request.into_inner();
        let invalid = |violation: FieldViolation| status(AccessError::Invalid(vec![violation]));
        // Every key, up to the page's bounds, for a caller that does not page (as before).
        let page_size = pagination::configuration_page_size(body.page_size).map_err(invalid)?;
        let after = match body.page_token.as_str() {
            "" => None,
            token => Some(pagination::decode_cursor(token).map_err(invalid)?),
        };
        let mut connection = db::connection(&self.pool).await.map_err(status)?;
        let rows =
            store::list_keys_page(&mut connection, body.include_revoked, page_size + 1, after)
                .await
                .map_err(|error| status(AccessError::from(error)))?;
        let (api_keys, next_page_token) = pagination::finish_page(
            rows,
            page_size,
            |row| (row.created_at, row.id),
            api_key_proto,
        );
        Ok(Response::new(ListApiKeysResponse {
            api_keys,
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let id = Uuid::parse_str(request.get_ref().id.trim())
            .map_err(|_| status(AccessError::invalid("id", "must be a UUID")))?;
        let mut connection = db::connection(&self.pool).await.map_err(status)?;
        let row = store::revoke_key(&mut connection, id, &context.caller, context.request_id)
            .await
            .map_err(status)?;
        self.authenticator.forget(&row.prefix);
        tracing::info!(key_id = %row.id, prefix = %row.prefix, "API key revoked");
        Ok(Response::new(RevokeApiKeyResponse {
            api_key: Some(api_key_proto(row)),
        }))
    }

    async fn list_audit_entries(
        &self,
        request: Request<ListAuditEntriesRequest>,
    ) -> Result<Response<ListAuditEntriesResponse>, Status> {
        let page = audit_log::list(&self.pool, request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(page))
    }
}
