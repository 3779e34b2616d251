//! Finding the installed PostgreSQL server binaries.

use std::path::{Path, PathBuf};

use crate::PgClusterError;

/// The directory holding `initdb`, `pg_ctl`, `postgres` and `pg_isready`: `PG_BIN_DIR` when set; else the directory of
/// `pg_ctl` on `PATH`; else the newest version in the usual package locations (Debian keeps
/// them off `PATH`, in `/usr/lib/postgresql/<version>/bin`).
pub fn find_bin_dir() -> Result<PathBuf, PgClusterError> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").map(PathBuf::from) {
        return has_server_tools(&dir)
            .then_some(dir)
            .ok_or(PgClusterError::NotInstalled);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|dir| has_server_tools(dir)) {
        // PATH may hold symlinks to a few of the tools only (pg_isready missing, say): use the
        // directory they point into, where the whole installation is.
        return Ok(std::fs::canonicalize(dir.join("pg_ctl"))
            .ok()
            .and_then(|real| real.parent().map(Path::to_path_buf))
            .filter(|real| has_server_tools(real))
            .unwrap_or(dir));
    }
    let mut candidates: Vec<PathBuf> = [
        "/usr/lib/postgresql",
        "/usr/local/pgsql",
        "/opt/homebrew/opt",
        "/usr",
    ]
    .iter()
    .flat_map(|root| versioned_bin_dirs(Path::new(root)))
    .filter(|dir| has_server_tools(dir))
    .collect();
    candidates.sort_by_key(|dir| version_of(dir));
    candidates.pop().ok_or(PgClusterError::NotInstalled)
}

fn has_server_tools(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres", "pg_isready"]
        .iter()
        .all(|tool| dir.join(tool).is_file())
}

/// `root/<anything>/bin` and `root/bin` for PostgreSQL-looking entries of `root`.
fn versioned_bin_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("bin")];
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let looks_versioned = name.chars().next().is_some_and(|c| c.is_ascii_digit())
                || name.starts_with("postgresql")
                || name.starts_with("pgsql");
            if looks_versioned {
                dirs.push(entry.path().join("bin"));
            }
        }
    }
    dirs
}

/// The numeric version in a path such as `/usr/lib/postgresql/15/bin`, for picking the newest.
fn version_of(dir: &Path) -> Vec<u32> {
    dir.components()
        .filter_map(|part| {
            let digits: String = part
                .as_os_str()
                .to_string_lossy()
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            (!digits.is_empty()).then_some(digits)
        })
        .flat_map(|digits| {
            digits
                .split('.')
                .filter_map(|part| part.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
