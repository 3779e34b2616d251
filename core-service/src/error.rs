//! The one mapping from the core's errors to gRPC status codes.

use std::error::Error as StdError;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::db::DbError;

/// One wrong input field: its name as the caller sent it (`phone_number`,
/// `person_properties.email`, `tags[2]`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Every failure an RPC can answer with, independent of the feature that produced it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A credential checked by the feature itself (a webhook signature) was refused.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// What a change was checked against changed meanwhile: reading again and resending may
    /// succeed.
    #[error("{0}")]
    Aborted(String),
    #[error("service unavailable")]
    Unavailable(#[source] DbError),
    #[error("internal error")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl From<DbError> for ServiceError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::NotFound => Self::NotFound("record"),
            DbError::UniqueViolation { constraint, .. } => Self::Conflict(format!(
                "a record with the same unique value exists ({constraint})"
            )),
            unavailable @ DbError::Unavailable(_) => Self::Unavailable(unavailable),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<diesel::result::Error> for ServiceError {
    fn from(error: diesel::result::Error) -> Self {
        Self::from(DbError::from(error))
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::InvalidArgument(violations) => {
                let message = violations
                    .iter()
                    .map(|violation| format!("{}: {}", violation.field, violation.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|violation| {
                            tonic_types::FieldViolation::new(violation.field, violation.description)
                        })
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ServiceError::Unauthenticated(message) => Status::unauthenticated(message),
            ServiceError::Conflict(message) => Status::already_exists(message),
            ServiceError::FailedPrecondition(message) => Status::failed_precondition(message),
            ServiceError::Aborted(message) => Status::aborted(message),
            ServiceError::Unavailable(cause) => {
                tracing::warn!(error = &cause as &dyn StdError, "database unavailable");
                Status::unavailable("the service is temporarily unavailable; retry later")
            }
            ServiceError::Internal(cause) => {
                tracing::error!(error = &*cause as &dyn StdError, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
