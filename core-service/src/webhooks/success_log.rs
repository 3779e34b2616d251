//! Successful attempts (a 2xx within the timeout), recorded in batches: whatever succeeded while the previous batch was being written goes in the next
//! one, in one statement. Under load most deliveries end this way, and one statement per
//! batch instead of one per delivery is most of the database's work saved. An idle log adds
//! no delay.

use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use super::deliver::record_successes;
use super::model::AttemptRow;
use crate::db::{self, DbPool};

const MOST_PER_BATCH: usize = 256;

/// A success waiting to be written, and who to tell when it is.
struct Waiting {
    row: AttemptRow,
    written: oneshot::Sender<Result<(), String>>,
}

#[derive(Default)]
pub(super) struct SuccessLog {
    queue: OnceLock<mpsc::UnboundedSender<Waiting>>,
}

impl SuccessLog {
    /// Stores `row` and marks its delivery succeeded; returns once that is committed. The
    /// writer starts on first use, with `pool`.
    pub(super) async fn record(&self, pool: &DbPool, row: AttemptRow) -> Result<(), String> {
        let queue = self.queue.get_or_init(|| {
            let (queue, waiting) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(pool.clone(), waiting));
            queue
        });
        let (written, answer) = oneshot::channel();
        queue
            .send(Waiting { row, written })
            .map_err(|_| "the success log has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the success log has stopped".to_owned())?
    }
}

async fn write_batches(pool: DbPool, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let mut batch = Vec::with_capacity(MOST_PER_BATCH);
    while waiting.recv_many(&mut batch, MOST_PER_BATCH).await > 0 {
        let (rows, answers): (Vec<AttemptRow>, Vec<_>) = batch
            .drain(..)
            .map(|waiting| (waiting.row, waiting.written))
            .unzip();
        let written = async {
            let mut connection = db::connection(&pool).await?;
            record_successes(&mut connection, &rows)
                .await
                .map_err(db::DbError::from)
        }
        .await
        .map_err(|error| error.to_string());
        for answer in answers {
            let _ = answer.send(written.clone());
        }
    }
}
