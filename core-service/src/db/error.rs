//! One classification of database failures, by SQLSTATE-derived kind, for every feature.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

/// A database failure, classified so that callers can map it without reading messages.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A unique constraint rejected the write (SQLSTATE 23505).
    #[error("unique constraint `{constraint}` violated")]
    UniqueViolation {
        constraint: String,
        #[source]
        source: DieselError,
    },
    /// The query expected a row and found none.
    #[error("row not found")]
    NotFound,
    /// No connection could be had, the connection broke, or PostgreSQL ended the transaction
    /// to resolve a conflict with another: the caller may retry later.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: a bug or a schema mismatch.
    #[error("database error")]
    Other(#[source] DieselError),
}

impl From<DieselError> for DbError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::NotFound => Self::NotFound,
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, ref info) => {
                Self::UniqueViolation {
                    constraint: info.constraint_name().unwrap_or_default().to_owned(),
                    source: error,
                }
            }
            // UnableToSendCommand is how diesel-async reports a connection whose socket closed
            // (PostgreSQL restarted, or ended the backend), a failure to retry, not a bug.
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            )
            | DieselError::BrokenTransactionManager => Self::Unavailable(Box::new(error)),
            // PostgreSQL ended the transaction to resolve a deadlock or a serialization conflict
            // with another one: the same request succeeds when sent again. diesel reports a
            // deadlock (40P01) only by its message.
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                Self::Unavailable(Box::new(error))
            }
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, ref info)
                if info.message() == "deadlock detected" =>
            {
                Self::Unavailable(Box::new(error))
            }
            other => Self::Other(other),
        }
    }
}

impl From<PoolError> for DbError {
    fn from(error: PoolError) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_is_unavailable_not_a_bug() {
        for kind in [
            DatabaseErrorKind::ClosedConnection,
            DatabaseErrorKind::UnableToSendCommand,
        ] {
            let error = DieselError::DatabaseError(kind, Box::new("connection closed".to_owned()));
            assert!(
                matches!(DbError::from(error), DbError::Unavailable(_)),
                "{kind:?}"
            );
        }
        let other = DieselError::DatabaseError(
            DatabaseErrorKind::CheckViolation,
            Box::new("check".to_owned()),
        );
        assert!(matches!(DbError::from(other), DbError::Other(_)));
    }
}
