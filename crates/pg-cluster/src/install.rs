//! Finding the installed PostgreSQL server programs.

use std::path::{Path, PathBuf};

use crate::PgClusterError;

/// The programs a cluster needs; client tools such as `pg_isready` are not required.
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
///
/// `PG_BIN_DIR` wins when set, so an unusual installation can always be named. Otherwise the
/// directory of `pg_ctl` on `PATH` (following symbolic links, because `PATH` often holds links
/// to a few of the programs only), and otherwise the newest version in the usual package
/// locations: Debian and Ubuntu keep the server programs off `PATH`, in
/// `/usr/lib/postgresql/<version>/bin`; source builds use `/usr/local/pgsql/bin`, Homebrew
/// `/opt/homebrew/opt/postgresql@<version>/bin` and the PGDG RPMs `/usr/pgsql-<version>/bin`.
pub fn find_bin_dir() -> Result<PathBuf, PgClusterError> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server_tools(&dir) {
            Ok(dir)
        } else {
            Err(PgClusterError::InvalidBinDir(dir))
        };
    }
    if let Some(dir) = from_path() {
        return Ok(dir);
    }
    newest_installed().ok_or(PgClusterError::NotInstalled)
}

fn from_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute() && dir.join("pg_ctl").is_file())
        .find_map(|dir| {
            let real = std::fs::canonicalize(dir.join("pg_ctl"))
                .ok()
                .and_then(|real| real.parent().map(Path::to_path_buf));
            real.into_iter()
                .chain(std::iter::once(dir))
                .find(|candidate| has_server_tools(candidate))
        })
}

fn newest_installed() -> Option<PathBuf> {
    // (parent directory, prefix of the versioned entries in it)
    let families = [
        ("/usr/lib/postgresql", ""),
        ("/opt/homebrew/opt", "postgresql"),
        ("/usr/local/opt", "postgresql"),
        ("/usr", "pgsql-"),
    ];
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = families
        .iter()
        .flat_map(|(parent, prefix)| versioned_bin_dirs(Path::new(parent), prefix))
        .chain(std::iter::once((
            Vec::new(),
            PathBuf::from("/usr/local/pgsql/bin"),
        )))
        .filter(|(_, dir)| has_server_tools(dir))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir)
}

/// `parent/<prefix><version>/bin` for every entry of `parent` starting with `prefix`, with the
/// version parsed from the entry's name (empty, so oldest, when it has none).
fn versioned_bin_dirs(parent: &Path, prefix: &str) -> Vec<(Vec<u32>, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(prefix)?;
            let version = parse_version(rest);
            // In /usr/lib/postgresql every entry is a version; elsewhere the prefix is too
            // broad (`postgresql-common`), so an entry must carry a version or be the bare name.
            let plausible = !version.is_empty() || rest.is_empty() || prefix.is_empty();
            plausible.then(|| (version, entry.path().join("bin")))
        })
        .collect()
}

/// `15`, `@16`, `-13`, `14.2` → `[15]`, `[16]`, `[13]`, `[14, 2]`.
fn parse_version(text: &str) -> Vec<u32> {
    text.trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .map_while(|part| part.parse().ok())
        .collect()
}

fn has_server_tools(dir: &Path) -> bool {
    SERVER_TOOLS.iter().all(|tool| dir.join(tool).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("15"), vec![15]);
        assert_eq!(parse_version("@16"), vec![16]);
        assert_eq!(parse_version("-9.6"), vec![9, 6]);
        assert_eq!(parse_version(""), Vec::<u32>::new());
        assert!(parse_version("10") > parse_version("9.6"));
    }
}
