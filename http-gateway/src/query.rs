//! A request's query string read into a typed filter, with a 400 that names the parameter it
//! could not read (axum's `Query` names it only inside its message).

use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `query` (the raw query string, if any) as `T`.
pub fn read<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    let parameters = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(parameters)).map_err(
        |error| {
            let field = match error.path().to_string() {
                // Not one parameter's fault (none named, or the string as a whole).
                path if path == "." || path.is_empty() => "query".to_owned(),
                path => path,
            };
            ApiError::invalid_field(field, error.inner().to_string())
        },
    )
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Filter {
        #[serde(default)]
        page_size: i32,
        #[serde(default)]
        status: String,
    }

    #[test]
    fn a_parameter_that_cannot_be_read_is_named() {
        for query in ["status=failed&page_size=ten", "page_size=99999999999"] {
            let error = read::<Filter>(Some(query)).expect_err(query);
            let fields: Vec<&str> = error.violations.iter().map(|v| v.field.as_str()).collect();
            assert_eq!(fields, ["page_size"], "{query}");
        }
    }

    #[test]
    fn absent_and_unknown_parameters_are_fine() {
        let filter = read::<Filter>(None).expect("empty");
        assert_eq!((filter.page_size, filter.status.as_str()), (0, ""));
        let filter = read::<Filter>(Some("status=dead&other=1")).expect("read");
        assert_eq!(filter.status, "dead");
    }
}
