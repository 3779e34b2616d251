//! Preparing a data directory that the PostgreSQL user can own and reach.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::PgClusterError;
use crate::process::RunAs;

/// Creates `dir` (and its missing parents) for PostgreSQL, mode 0700 as the server demands.
///
/// When we run the tools as another user, everything we create on the way is given to that
/// user, and an existing directory that belongs to someone else (a cluster first created by a
/// non-root run, say) is handed over entirely, because the server refuses files it does not
/// own. Directories above that the user cannot enter are reported up front: `initdb` would
/// otherwise fail with a bare "permission denied" on a path that looks perfectly fine to root.
pub fn prepare(dir: &Path, run_as: Option<&RunAs>) -> Result<(), PgClusterError> {
    if let Some(user) = run_as {
        check_reachable(dir, user)?;
    }
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|ancestor| std::fs::symlink_metadata(ancestor).is_err())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    if let Some(user) = run_as {
        for created in missing.iter().filter(|created| created.as_path() != dir) {
            user.take_ownership(created).map_err(io("chown", created))?;
        }
        let owner = std::fs::metadata(dir).map_err(io("inspect", dir))?.uid();
        if owner == user.uid {
            user.take_ownership(dir).map_err(io("chown", dir))?;
        } else {
            chown_tree(dir, user)?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PgClusterError {
    let path = path.to_path_buf();
    move |source| PgClusterError::Io {
        action,
        path,
        source,
    }
}

/// Every existing directory above `dir` must let `user` search it. The tools run with the
/// user's uid and primary gid only (std clears supplementary groups), so the mode bits decide.
fn check_reachable(dir: &Path, user: &RunAs) -> Result<(), PgClusterError> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            // Missing: we create it and give it to the user.
            continue;
        };
        if !can_search(&meta, user) {
            return Err(PgClusterError::Unreachable {
                data_dir: dir.to_path_buf(),
                blocked: ancestor.to_path_buf(),
                user: user.name.clone(),
            });
        }
    }
    Ok(())
}

fn can_search(meta: &std::fs::Metadata, user: &RunAs) -> bool {
    let mode = meta.mode();
    let bit = if meta.uid() == user.uid {
        0o100
    } else if meta.gid() == user.gid {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// Hands `dir` and everything below it to `user`, without following symbolic links.
fn chown_tree(dir: &Path, user: &RunAs) -> Result<(), PgClusterError> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        user.take_ownership(&path).map_err(io("chown", &path))?;
        let is_dir = std::fs::symlink_metadata(&path)
            .map_err(io("inspect", &path))?
            .is_dir();
        if is_dir {
            for entry in std::fs::read_dir(&path).map_err(io("list", &path))? {
                pending.push(entry.map_err(io("list", &path))?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> RunAs {
        RunAs {
            name: "postgres".to_owned(),
            uid: 4242,
            gid: 4343,
        }
    }

    #[test]
    fn private_directory_of_someone_else_is_not_searchable() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let meta = std::fs::metadata(dir.path()).expect("stat");
        assert!(!can_search(&meta, &user()));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        let meta = std::fs::metadata(dir.path()).expect("stat");
        assert!(can_search(&meta, &user()));
    }

    #[test]
    fn unreachable_data_dir_names_the_blocking_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let data_dir = dir.path().join("state").join("pgdata");
        match check_reachable(&data_dir, &user()) {
            Err(PgClusterError::Unreachable { blocked, .. }) => assert_eq!(blocked, dir.path()),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}
