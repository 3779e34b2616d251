//! Files the binary keeps in the data directory: the key pepper and the bootstrap admin key.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use switchbord_core::config::Secret;

const PEPPER_FILE: &str = "key-pepper";
pub const ADMIN_KEY_FILE: &str = "admin-key";

/// The pepper from `$SWITCHBORD_DATA_DIR/key-pepper`, created (mode 0600) on first use.
pub fn load_or_create_pepper(data_dir: &Path) -> anyhow::Result<Secret> {
    if let Some(existing) = read_pepper(data_dir) {
        return Ok(existing);
    }
    let pepper = new_pepper();
    write_private(&pepper_path(data_dir), pepper.expose())?;
    Ok(pepper)
}

/// Where the data directory keeps the pepper.
pub fn pepper_path(data_dir: &Path) -> PathBuf {
    data_dir.join(PEPPER_FILE)
}

/// The pepper kept in the data directory, if there is one.
pub fn read_pepper(data_dir: &Path) -> Option<Secret> {
    let existing = std::fs::read_to_string(pepper_path(data_dir)).ok()?;
    let existing = existing.trim();
    (!existing.is_empty()).then(|| Secret::new(existing))
}

/// A fresh random pepper: 32 bytes, base64url.
pub fn new_pepper() -> Secret {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(URL_SAFE_NO_PAD.encode(bytes))
}

/// Writes `contents` to `path`, readable by the owner only (a file that was there before, with
/// wider permissions, is narrowed before anything is written to it).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<PathBuf> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` applies only to a file the open creates.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_file_that_was_readable_by_others_is_made_private() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("admin-key");
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");

        write_private(&path, "secret").expect("write private");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "secret\n");
    }
}
