//! Running the PostgreSQL tools, as an unprivileged user when we are root.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::PgClusterError;

/// Variables that would make the tools act on another cluster or port than the one we name.
const CLEARED_ENV: &[&str] = &[
    "PGDATA",
    "PGPORT",
    "PGHOST",
    "PGHOSTADDR",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSFILE",
    "PGTZ",
    "PGDATESTYLE",
    "PGCLIENTENCODING",
];

/// The unprivileged user PostgreSQL runs as when this process is root (`initdb` and
/// `postgres` refuse to run as root).
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `None` when we are not root (the tools run as ourselves); else `postgres`, or `nobody`.
    pub fn for_current_user() -> Result<Option<Self>, PgClusterError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        ["postgres", "nobody"]
            .iter()
            .find_map(|name| lookup_user(name))
            .map(Some)
            .ok_or(PgClusterError::NoUnprivilegedUser)
    }

    /// Gives `path` to this user, so that PostgreSQL can own its data directory. Symbolic
    /// links themselves are changed, never what they point to.
    pub fn take_ownership(&self, path: &Path) -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
    }

    fn apply(&self, command: &mut Command) {
        // std drops the supplementary groups itself (setgroups(0)) when a root process sets a
        // uid, so the tool ends up with exactly this user's uid and primary gid.
        command.gid(self.gid).uid(self.uid);
    }
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let c_name = CString::new(name).ok()?;
    let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r (the thread-safe variant, unlike getpwnam) fills `entry` with pointers
    // into `buffer`, both of which outlive this use; we copy the ids out immediately.
    let result = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            entry.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if result != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success `found` points at the initialised `entry`.
    let entry = unsafe { &*found };
    // SAFETY: pw_name is a NUL-terminated string inside `buffer`, still alive here.
    let name = unsafe { CStr::from_ptr(entry.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some(RunAs {
        name,
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

/// One PostgreSQL command-line tool.
pub struct Tool<'a> {
    name: &'static str,
    path: PathBuf,
    run_as: Option<&'a RunAs>,
}

impl<'a> Tool<'a> {
    pub fn new(bin_dir: &Path, name: &'static str, run_as: Option<&'a RunAs>) -> Self {
        Self {
            name,
            path: bin_dir.join(name),
            run_as,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        // The unprivileged user may not be able to enter our working directory, and a relative
        // path must never be resolved against it (all our paths are absolute).
        command.current_dir("/");
        // Messages in English, so that the error tails we report are the ones people search for.
        command.env("LC_ALL", "C").env("LANG", "C");
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        if let Some(user) = self.run_as {
            user.apply(&mut command);
        }
        command
    }

    /// Runs the tool to completion; a non-zero exit is an error carrying the tail of its output.
    pub fn run(&self, args: &[&OsStr]) -> Result<String, PgClusterError> {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| PgClusterError::Io {
                action: "run",
                path: self.path.clone(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            let label = match args.first() {
                Some(first) if self.name == "pg_ctl" => {
                    format!("pg_ctl {}", first.to_string_lossy())
                }
                _ => self.name.to_owned(),
            };
            Err(PgClusterError::Command {
                command: label,
                status: output.status.to_string(),
                output: tail(&text, TAIL_BYTES),
            })
        }
    }

    /// Whether the tool exits successfully (output discarded).
    pub fn succeeds(&self, args: &[&OsStr]) -> bool {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// How much of a failing tool's output or log we quote: enough for PostgreSQL's
/// FATAL/DETAIL/HINT lines, short enough to read in one screen.
pub const TAIL_BYTES: usize = 2000;

/// The last `max` bytes of `text` (on a character boundary), where errors usually are.
pub fn tail(text: &str, max: usize) -> String {
    let trimmed = text.trim();
    let mut start = trimmed.len().saturating_sub(max);
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    trimmed[start..].to_owned()
}

/// The tail of a log file from byte `from` on (what one start attempt wrote), or of the whole
/// file if it is shorter than that (it was replaced).
pub fn log_tail(log: &Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(from)
        .ok()
        .filter(|&start| start <= bytes.len())
        .unwrap_or(0);
    tail(&String::from_utf8_lossy(&bytes[start..]), TAIL_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("  abc  ", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }
}
