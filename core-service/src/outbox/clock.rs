//! Time as the outbox sees it, replaceable so that tests can move it forward instead of sleeping.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Real time plus an offset that tests advance by hand.
#[derive(Debug, Default)]
pub struct ManualClock {
    offset: Mutex<Duration>,
}

impl ManualClock {
    pub fn advance(&self, by: std::time::Duration) {
        if let Ok(mut offset) = self.offset.lock() {
            *offset += Duration::from_std(by).unwrap_or(Duration::MAX);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let offset = self.offset.lock().map(|offset| *offset).unwrap_or_default();
        Utc::now() + offset
    }
}
