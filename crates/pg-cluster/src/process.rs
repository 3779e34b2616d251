//! Running the PostgreSQL tools, as an unprivileged user when we are root.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::PgClusterError;

/// The unprivileged user PostgreSQL runs as when this process is root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `None` when we are not root (the tools run as ourselves); else `postgres`, or `nobody`.
    pub fn for_current_user() -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        ["postgres", "nobody"]
            .iter()
            .find_map(|name| lookup_user(name))
    }

    /// Gives `path` to this user, so that PostgreSQL can own its data directory.
    pub fn take_ownership(&self, path: &Path) -> std::io::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
    }

    fn apply(&self, command: &mut Command) {
        // std drops supplementary groups itself when a root process sets a uid.
        command.gid(self.gid).uid(self.uid);
    }
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer into static storage
    // (or null); we copy the two ids out before any other call could overwrite it.
    unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        (!entry.is_null()).then(|| RunAs {
            uid: (*entry).pw_uid,
            gid: (*entry).pw_gid,
        })
    }
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

    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        // The unprivileged user may not be able to enter our working directory.
        command.current_dir(std::env::temp_dir());
        command.env("LC_ALL", "C").env_remove("PGDATA");
        if let Some(user) = self.run_as {
            user.apply(&mut command);
        }
        command
    }

    /// Runs the tool to completion; a non-zero exit is an error carrying its output.
    pub fn run(&self, args: &[&str]) -> Result<String, PgClusterError> {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| PgClusterError::Io {
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
            Err(PgClusterError::Command {
                tool: self.name,
                status: output.status.to_string(),
                output: tail(&text, 2000),
            })
        }
    }

    /// Whether the tool exits successfully (output discarded).
    pub fn succeeds(&self, args: &[&str]) -> bool {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// The last `max` bytes of `text` (on a character boundary), where errors usually are.
pub fn tail(text: &str, max: usize) -> String {
    let trimmed = text.trim();
    let mut start = trimmed.len().saturating_sub(max);
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    trimmed[start..].to_owned()
}
