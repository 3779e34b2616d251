//! A connection that only `LISTEN`s, kept open for the life of the process.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;

/// What a listening connection reports to its owner.
pub trait Listener: Send + 'static {
    /// Listening, after the start or a reconnection: notifications sent meanwhile were lost.
    fn listening(&self);
    fn notified(&self, payload: &str);
    /// The connection ended; it is retried after a second.
    fn stopped(&self) {}
}

/// Listens on `channel` until aborted, reconnecting a second after each failure. `purpose`
/// names what goes without while it cannot, for the log.
pub async fn listen(
    database_url: String,
    channel: &'static str,
    purpose: &'static str,
    listener: impl Listener,
) {
    loop {
        match AsyncPgConnection::establish(&database_url).await {
            Ok(mut connection) => {
                let listening = diesel::sql_query(format!("LISTEN {channel}"))
                    .execute(&mut connection)
                    .await;
                if listening.is_ok() {
                    listener.listening();
                    let mut notifications = std::pin::pin!(connection.notifications_stream());
                    while let Some(Ok(notification)) = notifications.next().await {
                        listener.notified(&notification.payload);
                    }
                    listener.stopped();
                }
            }
            Err(error) => tracing::warn!(%error, channel, "cannot LISTEN; {purpose}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
