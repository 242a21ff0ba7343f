//! Files that survive a power cut: written to a temporary file, synced, renamed over the old
//! one, and the directory synced, so a reader finds either the old contents or the new.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `data` atomically and durably (`private`: mode 0600 on Unix).
pub(crate) fn write_atomically(path: &Path, data: &[u8], private: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Syncs the directory holding `path`, so a rename in it is durable.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
