//! `GetContact`: read one contact by id, phone number or external reference id.

use switchbord_api::v1::get_contact_request::Lookup;
use uuid::Uuid;

use super::error::ContactError;
use super::input::MAX_REFERENCE_LEN;
use super::model::ContactRow;
use super::{phone, store};
use crate::db::{self, DbError};
use crate::error::FieldViolation;
use crate::state::AppState;
use crate::validation::short_text_problem;

#[tracing::instrument(skip_all)]
pub async fn get_contact(
    state: &AppState,
    lookup: Option<Lookup>,
) -> Result<ContactRow, ContactError> {
    let invalid = |field: &str, description: String| {
        ContactError::Invalid(vec![FieldViolation::new(field, description)])
    };
    let lookup = lookup.ok_or_else(|| {
        invalid(
            "lookup",
            "one of id, phone_number or external_reference_id is required".into(),
        )
    })?;
    // What no contact can hold is the caller's error (PostgreSQL refuses a NUL with an error
    // that names no field), found before a connection is taken.
    if let Lookup::ExternalReferenceId(reference) = &lookup
        && let Some(problem) = short_text_problem(reference.trim(), MAX_REFERENCE_LEN)
    {
        return Err(invalid("external_reference_id", problem));
    }
    let mut connection = db::connection(&state.pool).await?;
    let found = match lookup {
        Lookup::Id(id) => {
            let id =
                Uuid::parse_str(id.trim()).map_err(|_| invalid("id", "must be a UUID".into()))?;
            store::find_by_id(&mut connection, id).await
        }
        Lookup::PhoneNumber(raw) => {
            let number = phone::normalize(&raw, state.default_region)
                .map_err(|error| invalid("phone_number", error.to_string()))?;
            store::find_by_phone(&connection, number.as_str()).await
        }
        Lookup::ExternalReferenceId(reference) => {
            store::find_by_reference(&mut connection, reference.trim()).await
        }
    };
    found.map_err(|error| match DbError::from(error) {
        DbError::NotFound => ContactError::NotFound,
        other => ContactError::Db(other),
    })
}
