//! Errors of the access feature.

use crate::db::DbError;
use crate::error::{FieldViolation, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Shown whole where no status carries the fields (`switchbord keys` on the database).
    #[error("invalid input: {}", listed(.0))]
    Invalid(Vec<FieldViolation>),
    #[error("api key not found")]
    KeyNotFound,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for AccessError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Db(DbError::from(error))
    }
}

fn listed(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl AccessError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }
}

impl From<AccessError> for ServiceError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Invalid(violations) => Self::InvalidArgument(violations),
            AccessError::KeyNotFound => Self::NotFound("api key"),
            AccessError::Db(db) => Self::from(db),
        }
    }
}
