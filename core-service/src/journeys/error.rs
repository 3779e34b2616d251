//! Errors of the journeys feature.

use crate::contacts::ContactError;
use crate::db::DbError;
use crate::error::{FieldViolation, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum JourneyError {
    #[error("invalid trigger")]
    Invalid(Vec<FieldViolation>),
    #[error(transparent)]
    Contact(#[from] ContactError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for JourneyError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Db(DbError::from(error))
    }
}

impl From<JourneyError> for ServiceError {
    fn from(error: JourneyError) -> Self {
        match error {
            JourneyError::Invalid(violations) => Self::InvalidArgument(violations),
            JourneyError::Contact(contact) => Self::from(contact),
            JourneyError::Db(db) => Self::from(db),
        }
    }
}
