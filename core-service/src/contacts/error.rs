//! Errors of the contacts feature.

use uuid::Uuid;

use crate::db::DbError;
use crate::error::{FieldViolation, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    #[error("invalid contact input")]
    Invalid(Vec<FieldViolation>),
    /// The phone number and the external reference id name two different contacts.
    #[error(
        "phone_number belongs to contact {phone_contact} but external_reference_id belongs to contact {reference_contact}"
    )]
    IdentityConflict {
        phone_contact: Uuid,
        reference_contact: Uuid,
    },
    #[error("contact not found")]
    NotFound,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for ContactError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Db(DbError::from(error))
    }
}

impl From<ContactError> for ServiceError {
    fn from(error: ContactError) -> Self {
        match error {
            ContactError::Invalid(violations) => Self::InvalidArgument(violations),
            conflict @ ContactError::IdentityConflict { .. } => {
                Self::Conflict(conflict.to_string())
            }
            ContactError::NotFound => Self::NotFound("contact"),
            ContactError::Db(db) => Self::from(db),
        }
    }
}
