//! Watching the listener's certificate files, the way cert-manager rotates a mounted Secret
//! (a symlink swapped to new files): when any of them changes, the config is reloaded, which
//! reads them again. A bad new certificate fails that reload, and the old one stays.

use std::path::Path;
use std::time::SystemTime;

/// How often the files are looked at.
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What a file looks like from outside: enough to see that it was replaced or rewritten.
type Stamp = Option<(SystemTime, u64, u64)>;

/// The files' stamps when last looked at.
#[derive(Debug, Default)]
pub struct Watch {
    last: Vec<Stamp>,
}

impl Watch {
    /// Whether any of `files` changed since the last look (the first look sees no change).
    pub fn changed<'a>(&mut self, files: impl Iterator<Item = &'a Path>) -> bool {
        let now: Vec<Stamp> = files.map(stamp).collect();
        let changed = !self.last.is_empty() && self.last != now;
        self.last = now;
        changed
    }
}

/// The file's modification time, length and inode, following symlinks; `None` if missing.
fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_or_replaced_file_is_a_change_and_the_first_look_is_not() {
        let dir = std::env::temp_dir().join(format!("sluice-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, next) = (dir.join("cert.pem"), dir.join("next.pem"));
        std::fs::write(&cert, "one").unwrap();
        let mut watch = Watch::default();
        assert!(!watch.changed([cert.as_path()].into_iter()));
        assert!(!watch.changed([cert.as_path()].into_iter()));
        std::fs::write(&cert, "three").unwrap();
        assert!(watch.changed([cert.as_path()].into_iter()), "rewritten");
        std::fs::write(&next, "three").unwrap();
        std::fs::rename(&next, &cert).unwrap();
        assert!(watch.changed([cert.as_path()].into_iter()), "replaced");
        std::fs::remove_file(&cert).unwrap();
        assert!(watch.changed([cert.as_path()].into_iter()), "gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
