//! Which process owns a persistent cluster: the one holding an exclusive lock on a file beside
//! its data directory. The kernel releases the lock when that process ends, however it ends, so
//! a server left running by a killed process is free to take over, and one that a live process
//! runs is not (taking it over would stop it under that process and start it on another port,
//! where that process could never reach it again).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::PgClusterError;

/// Held for as long as the cluster is owned; dropping it releases the cluster.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
}

/// Takes the owner lock of the cluster in `data_dir`, without waiting: a cluster that another
/// process owns is [`PgClusterError::InUse`].
pub fn take(data_dir: &Path) -> Result<OwnerLock, PgClusterError> {
    // Beside the directory, not in it: initdb wants the directory empty, and when we are root
    // the directory belongs to the server's user.
    let path = lock_path(data_dir);
    let io = |source| PgClusterError::Io {
        action: "lock",
        path: path.clone(),
        source,
    };
    // Read-only when it exists: a lock needs no more, and a file left by a run as another user
    // (root, which runs the server as `postgres`) is readable where it is not writable.
    let file = match File::open(&path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path),
        opened => opened,
    }
    .map_err(io)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EWOULDBLOCK) => PgClusterError::InUse {
                data_dir: data_dir.to_path_buf(),
            },
            _ => io(error),
        });
    }
    Ok(OwnerLock { _file: file })
}

fn lock_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".owner.lock");
    data_dir.with_file_name(name)
}
