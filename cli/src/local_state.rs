//! Files the binary keeps in the data directory: the key pepper and the bootstrap admin key.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    let path = data_dir.join(PEPPER_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(Secret::new(existing));
        }
    }
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let pepper = URL_SAFE_NO_PAD.encode(bytes);
    write_private(&path, &pepper)?;
    Ok(Secret::new(pepper))
}

/// Writes `contents` to `path`, readable by the owner only.
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
    file.write_all(contents.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.to_path_buf())
}
