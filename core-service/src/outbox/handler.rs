//! Job kinds and their handlers, registered by the features that own them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::clock::Clock;
use super::store::ClaimedJob;
use crate::db::DbPool;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler may use.
#[derive(Clone)]
pub struct JobContext {
    pub pool: DbPool,
    pub clock: Arc<dyn Clock>,
}

/// Why a job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again later (after at least `after`, when given), until the kind's attempts run out.
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// Retrying cannot help: dead-letter the job now.
    #[error("{0}")]
    Permanent(String),
    /// Not now, and not the job's fault (a per-receiver limit): run it again after `after`
    /// without counting this attempt.
    #[error("deferred")]
    Defer { after: Duration },
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            after: None,
        }
    }
}

/// A job kind: its name and how many attempts it gets before it is dead-lettered. Declared
/// as a constant by the feature that owns it, used both to enqueue and to handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobKind {
    pub name: &'static str,
    pub max_attempts: i32,
}

/// Runs the jobs of one kind. Delivery is at least once: `run` must be idempotent.
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> JobKind;

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>>;
}

/// The handlers of every job kind this process runs.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
}

impl Registry {
    pub fn register(&mut self, handler: impl JobHandler) -> &mut Self {
        self.handlers.insert(handler.kind().name, Arc::new(handler));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn JobHandler>> {
        self.handlers.get(kind).cloned()
    }
}
