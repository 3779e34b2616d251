//! Stopping clusters when the process exits normally.
//!
//! A test harness keeps its cluster in a `static`, which is never dropped, and a normal exit
//! (`return` from `main`, `std::process::exit`) runs no destructors, but it does run the C
//! `atexit` handlers. One handler stops every ephemeral server still running and every cluster
//! handed over with [`crate::PgCluster::stop_at_exit`].

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use crate::PgCluster;

/// Ephemeral servers still running: (postmaster pid, directory to remove).
static SERVERS: Mutex<Vec<(i32, PathBuf)>> = Mutex::new(Vec::new());
/// Clusters whose stop is deferred to the exit.
static CLUSTERS: Mutex<Vec<PgCluster>> = Mutex::new(Vec::new());

pub fn track_server(pid: i32, root: PathBuf) {
    install_hook();
    locked(&SERVERS).push((pid, root));
}

pub fn untrack_server(pid: i32) {
    locked(&SERVERS).retain(|(tracked, _)| *tracked != pid);
}

pub fn keep_until_exit(cluster: PgCluster) {
    install_hook();
    locked(&CLUSTERS).push(cluster);
}

/// A panic must not make the exit hook skip its work, so poisoning is ignored: the lists stay
/// consistent because every update is a single push or retain.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn()` that never unwinds.
        if unsafe { libc::atexit(run_at_exit) } != 0 {
            tracing::warn!(
                "could not register the exit hook; private PostgreSQL servers may outlive this process"
            );
        }
    });
}

extern "C" fn run_at_exit() {
    // Taken out of the lists first: stopping a cluster updates `SERVERS` itself.
    let clusters = std::mem::take(&mut *locked(&CLUSTERS));
    drop(clusters);
    let servers = std::mem::take(&mut *locked(&SERVERS));
    for (pid, root) in servers {
        crate::ephemeral::stop_and_remove(pid, &root);
    }
}
