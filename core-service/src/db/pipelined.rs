//! Transactions of two round trips: `BEGIN` travels with the reads and `COMMIT` with the writes.
//!
//! diesel's `transaction` waits for `BEGIN` and for `COMMIT` on their own, so a read-then-write
//! transaction costs four round trips. Statements sent on one connection without waiting still
//! run in the order they were sent (diesel-async pipelines futures polled together, in the order
//! they are first polled), so `BEGIN` can go ahead of the reads and `COMMIT` behind the writes.
//!
//! Three things keep this as safe as diesel's own transaction:
//! - The transaction is marked open in diesel's transaction manager before `BEGIN` is sent. If
//!   the future is dropped half way (a caller went away), the pool sees an open transaction and
//!   closes the connection instead of handing it out again; PostgreSQL then rolls back.
//! - The writes are polled once before `COMMIT` is created. Each write sends its statement on its
//!   first poll, and an error found before sending (a value that cannot be encoded) surfaces on
//!   that poll too: `COMMIT` only ever follows writes that were all sent.
//! - A write that fails in the database aborts the transaction, and PostgreSQL answers the
//!   `COMMIT` behind it by rolling back. So the writes must fail only through their statements:
//!   that is why the write step returns `QueryResult`.
//!
//! What the write step must therefore keep to: every statement is sent on its first poll (never
//! one after another's reply, or the later one runs after `COMMIT`, outside the transaction);
//! no statement binds a custom SQL type (diesel-async looks its OID up before it queues the
//! statement, which would let `COMMIT` overtake it); and statements are `execute`d, not read
//! back (a row that fails to decode is an error that does not abort the transaction).

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use diesel::connection::{TransactionDepthChange, TransactionManagerStatus};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::{QueryResult, result::Error as DieselError};
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};

/// Runs `read`, then `write` with what it read, in one transaction: `BEGIN` is sent with the
/// reads and `COMMIT` with the writes. `read` may fail in its own terms (the transaction is then
/// rolled back); `write` must send all its statements at once (pipelined, never one after
/// another's reply) and fail only through them.
///
/// Inside a caller's transaction this is a savepoint, as diesel's `transaction` makes it.
pub async fn read_then_write<R, T, E>(
    connection: &mut AsyncPgConnection,
    read: impl AsyncFnOnce(&AsyncPgConnection) -> Result<R, E>,
    write: impl AsyncFnOnce(&AsyncPgConnection, R) -> QueryResult<T>,
) -> Result<T, E>
where
    E: From<DieselError>,
{
    if in_transaction(connection)? {
        return in_savepoint(connection, read, write).await;
    }
    change_depth(connection, TransactionDepthChange::IncreaseDepth)?;
    let shared: &AsyncPgConnection = connection;
    let (begun, read_value) = futures::join!(Begin.execute(&mut { shared }), read(shared));
    let ending = match (begun, read_value) {
        (Err(error), _) => Ending::Open(error.into()),
        (Ok(_), Err(error)) => Ending::Open(error),
        (Ok(_), Ok(read_value)) => match commit_behind(shared, write(shared, read_value)).await {
            Ending::Closed(result) => Ending::Closed(result.map_err(E::from)),
            Ending::Open(error) => Ending::Open(error.into()),
        },
    };
    match ending {
        Ending::Closed(result) => {
            change_depth(connection, TransactionDepthChange::DecreaseDepth)?;
            result
        }
        Ending::Open(error) => {
            roll_back(connection).await;
            Err(error)
        }
    }
}

/// Runs `write` in a transaction whose `COMMIT` is sent with its statements: two round trips
/// (`BEGIN`, then the writes) where diesel's `transaction` takes three. `write` must send all
/// its statements at once and fail only through them, as in [`read_then_write`].
pub async fn write_only<T>(
    connection: &mut AsyncPgConnection,
    write: impl AsyncFnOnce(&AsyncPgConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    read_then_write(
        connection,
        async |_| Ok(()),
        async |connection, ()| write(connection).await,
    )
    .await
}

/// The steps one after another in a savepoint of the caller's transaction, as diesel's
/// `transaction` runs them there (whose `Send` bounds these generic steps cannot name).
async fn in_savepoint<R, T, E>(
    connection: &mut AsyncPgConnection,
    read: impl AsyncFnOnce(&AsyncPgConnection) -> Result<R, E>,
    write: impl AsyncFnOnce(&AsyncPgConnection, R) -> QueryResult<T>,
) -> Result<T, E>
where
    E: From<DieselError>,
{
    AnsiTransactionManager::begin_transaction(connection).await?;
    let shared: &AsyncPgConnection = connection;
    let result = match read(shared).await {
        Ok(read_value) => write(shared, read_value).await.map_err(E::from),
        Err(error) => Err(error),
    };
    match result {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(connection).await?;
            Ok(value)
        }
        Err(error) => match AnsiTransactionManager::rollback_transaction(connection).await {
            Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(error),
            Err(rollback_error) => Err(rollback_error.into()),
        },
    }
}

/// How the transaction stands when the steps are done.
enum Ending<T, E> {
    /// `COMMIT` was answered: committed when the result is `Ok`, rolled back when a write failed.
    Closed(Result<T, E>),
    /// Still open: it must be rolled back.
    Open(E),
}

/// Sends `COMMIT` right behind the statements of `write`, once they are all on their way.
async fn commit_behind<T>(
    shared: &AsyncPgConnection,
    write: impl Future<Output = QueryResult<T>>,
) -> Ending<T, DieselError> {
    let mut write = pin!(write);
    match futures::poll!(write.as_mut()) {
        // Failed before its statements were all sent: nothing may commit.
        Poll::Ready(Err(error)) => Ending::Open(error),
        Poll::Ready(Ok(value)) => match Commit.execute(&mut { shared }).await {
            Ok(_) => Ending::Closed(Ok(value)),
            Err(error) => Ending::Open(error),
        },
        Poll::Pending => match futures::join!(write, Commit.execute(&mut { shared })) {
            (Err(error), Ok(_)) if !matches!(error, DieselError::DatabaseError(..)) => {
                // Not PostgreSQL's error, so nothing aborted the transaction: `COMMIT` committed
                // what was sent. A write step that breaks the rules above; say so loudly.
                tracing::error!(
                    %error,
                    "a pipelined write failed in the client after COMMIT was sent; what was sent is committed"
                );
                Ending::Closed(Err(error))
            }
            // A failed write aborted the transaction, and this `COMMIT` rolled it back.
            (written, Ok(_)) => Ending::Closed(written),
            (_, Err(error)) => Ending::Open(error),
        },
    }
}

fn in_transaction(connection: &mut AsyncPgConnection) -> QueryResult<bool> {
    Ok(status(connection).transaction_depth()?.is_some())
}

fn change_depth(
    connection: &mut AsyncPgConnection,
    change: TransactionDepthChange,
) -> QueryResult<()> {
    match status(connection) {
        TransactionManagerStatus::Valid(valid) => valid.change_transaction_depth(change),
        TransactionManagerStatus::InError => Err(DieselError::BrokenTransactionManager),
    }
}

fn status(connection: &mut AsyncPgConnection) -> &mut TransactionManagerStatus {
    AnsiTransactionManager::transaction_manager_status_mut(connection)
}

/// Ends a transaction left open by a failure. When even `ROLLBACK` fails, the transaction
/// manager is marked broken, as diesel does: the pool closes the connection rather than reuse
/// it, and a plain connection refuses further transactions instead of nesting them.
async fn roll_back(connection: &mut AsyncPgConnection) {
    if connection.batch_execute("ROLLBACK").await.is_ok() {
        // Cannot fail: the depth was raised above and nothing else lowers it.
        let _ = change_depth(connection, TransactionDepthChange::DecreaseDepth);
    } else {
        status(connection).set_in_error();
    }
}

/// `BEGIN` as a statement of its own type, so that each connection prepares it once and sends it
/// in the same queue as the statements around it (`sql_query` would be prepared on every use).
#[derive(Debug, Clone, Copy, QueryId)]
struct Begin;

/// `COMMIT`, prepared once per connection like [`Begin`].
#[derive(Debug, Clone, Copy, QueryId)]
struct Commit;

impl QueryFragment<Pg> for Begin {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("BEGIN");
        Ok(())
    }
}

impl QueryFragment<Pg> for Commit {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("COMMIT");
        Ok(())
    }
}
