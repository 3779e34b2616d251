//! The page a list route is asked for, `?page_size=…&page_token=…`, passed to the core as sent:
//! the core bounds the size and reads the token.

use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, at most 500 (the default: 500 for configuration lists, else 50); a page of
    /// large items may hold fewer.
    #[serde(default)]
    #[param(required = false)]
    pub page_size: i32,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    #[param(required = false)]
    pub page_token: String,
}

impl PageQuery {
    /// The page a request's query string asks for, or a 400 naming the parameter that cannot
    /// be read.
    pub fn read(query: Option<&str>) -> Result<Self, ApiError> {
        crate::query::read(query)
    }
}
