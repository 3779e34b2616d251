//! The one mapping from the core's errors to gRPC status codes.

use std::error::Error as StdError;

use switchbord_api::violations;
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

/// How many violations the status message spells out; the details list the rest.
const MAX_SUMMARISED_VIOLATIONS: usize = 3;
/// Field names can echo the caller's input (a property's key): longer ones are cut.
const MAX_FIELD_BYTES: usize = 64;
const MAX_DESCRIPTION_BYTES: usize = 200;

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// `INVALID_ARGUMENT` naming each wrong field in a `BadRequest` detail, as many as
/// [`violations::keep_listed`] keeps.
fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    // Bounded before the count of those not listed is added, so that it is never cut off.
    let mut violations: Vec<FieldViolation> = violations
        .into_iter()
        .map(|violation| FieldViolation {
            field: bounded(violation.field, MAX_FIELD_BYTES),
            description: bounded(violation.description, MAX_DESCRIPTION_BYTES),
        })
        .collect();
    let found = violations.len();
    violations::keep_listed(&mut violations, 0, |violation| &mut violation.description);
    let mut message = violations
        .iter()
        .take(MAX_SUMMARISED_VIOLATIONS)
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ");
    let more = found - found.min(MAX_SUMMARISED_VIOLATIONS);
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
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

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::InvalidArgument(violations) => invalid_argument(violations),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short".to_owned(), 8), "short");
        assert_eq!(bounded("äöüäöü".to_owned(), 8), "äöüä…");
        // Three bytes each: 8 bytes end inside the third.
        assert_eq!(bounded("€€€€".to_owned(), 8), "€€…");
    }

    #[test]
    fn many_violations_are_listed_up_to_the_bound_and_counted_beyond() {
        let violations = (0..25)
            .map(|index| FieldViolation::new(format!("tags[{index}]"), "must not be empty"))
            .collect();
        let status = invalid_argument(violations);
        let listed = status
            .get_details_bad_request()
            .expect("a BadRequest detail")
            .field_violations;
        assert_eq!(listed.len(), violations::MAX_LISTED);
        assert_eq!(
            listed[19].description,
            "must not be empty (and 5 more not listed)"
        );
        assert_eq!(
            status.message(),
            "tags[0]: must not be empty; tags[1]: must not be empty; tags[2]: must not be empty; \
             and 22 more"
        );
    }
}
