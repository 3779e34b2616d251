//! Statements whose text is fixed, prepared once per connection.
//!
//! diesel-async keeps a prepared statement per connection for every query that diesel calls safe
//! to cache. diesel calls no `UPDATE`, no `sql_query` and no `ON CONFLICT DO UPDATE` safe, because
//! their text *may* be built at run time. PostgreSQL then parses and plans them on every call,
//! and diesel-async holds its statement-cache lock over that extra round trip, so statements
//! pipelined behind one wait for it too. [`prepared`] vouches for a query whose text is the same
//! on every call.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};

/// `query`, prepared once per connection. Its SQL text must not vary between calls (no
/// `format!`, no changeset field that is left out when `None`): diesel-async keys the prepared
/// statement by that text.
pub fn prepared<Q>(query: Q) -> Prepared<Q> {
    Prepared(query)
}

/// See [`prepared`].
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    // No static id: the statement is cached under its SQL text.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}
