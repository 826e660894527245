//! This storage instance's claim on a data dir, so crash leftovers can be
//! told from files still being written.
//!
//! Each `FsStorage` holds an exclusive `flock` on `.instances/<tag>.lock`
//! for its lifetime and puts its tag in every temp file it creates. A temp
//! file whose tag's lock is gone or free belongs to a writer that died
//! mid-write (`kill -9`, power loss) and is removed; the kernel releases a
//! dead process's locks, so no timeout or pid guess is involved.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use super::durable_file::{FILE_MODE, ensure_dirs};

const INSTANCES_DIR: &str = ".instances";
/// The health probe's file, named after the instance that writes it.
pub const PROBE_PREFIX: &str = ".health-probe-";

#[derive(Debug)]
pub struct Instance {
    root: PathBuf,
    tag: String,
    /// The held lock, once claimed. A std mutex: held only for the claim's
    /// few syscalls, on blocking threads.
    lock: Mutex<Option<File>>,
}

impl Instance {
    /// A fresh tag for `root`; the claim is made by the first write, so a
    /// data dir that is read-only at start-up can still become writable.
    pub fn new(root: &Path) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let tag = format!(
            "{:x}-{nanos:x}-{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            root: root.to_path_buf(),
            tag,
            lock: Mutex::new(None),
        }
    }

    /// The data dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The tag to name this instance's temp files with; claims it first, so
    /// no file bearing it exists before its lock is held.
    pub fn owner_tag(&self) -> io::Result<&str> {
        let mut lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if lock.is_none() {
            *lock = Some(self.claim()?);
        }
        Ok(&self.tag)
    }

    /// Takes the lock, then removes what dead instances left in the data
    /// dir's root and lock directory.
    fn claim(&self) -> io::Result<File> {
        let dir = ensure_dirs(&self.root, &[INSTANCES_DIR])?;
        // Locked before it gets its final name, so no sweeper ever finds
        // the lock of a live instance free.
        let staging = dir.join(format!(".{}.new", self.tag));
        // The tag is this instance's alone, so a staging file left by an
        // earlier failed claim is its own to reuse.
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&staging)?;
        lock.try_lock().map_err(io::Error::from)?;
        fs::rename(&staging, self.lock_path(&self.tag))?;
        let swept = self
            .sweep(&self.root)
            .and_then(|()| self.forget_dead_instances());
        if let Err(err) = swept {
            tracing::warn!(error = %err, "could not sweep for crashed instances' leftovers");
        }
        Ok(lock)
    }

    /// Removes files in `dir` that dead instances left half-written.
    pub fn sweep(&self, dir: &Path) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(tag) = owner_tag(name)
                && self.is_dead(tag)
            {
                tracing::info!(file = %dir.join(name).display(), "removing a crashed writer's leftover");
                // Best effort: another sweeper may have removed it already.
                let _ = fs::remove_file(dir.join(name));
            }
        }
        Ok(())
    }

    fn is_dead(&self, tag: &str) -> bool {
        if tag == self.tag {
            return false;
        }
        match File::open(self.lock_path(tag)) {
            Err(err) => err.kind() == io::ErrorKind::NotFound,
            // Free means its holder is gone; dropping `lock` frees it again.
            Ok(lock) => lock.try_lock().is_ok(),
        }
    }

    fn forget_dead_instances(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join(INSTANCES_DIR))? {
            let name = entry?.file_name();
            if let Some(tag) = name.to_str().and_then(|n| n.strip_suffix(".lock"))
                && self.is_dead(tag)
            {
                let _ = fs::remove_file(self.lock_path(tag));
            }
        }
        Ok(())
    }

    fn lock_path(&self, tag: &str) -> PathBuf {
        self.root.join(INSTANCES_DIR).join(format!("{tag}.lock"))
    }
}

/// The tag in a temp file's name (`.<name>.<tag>.<n>.tmp`, see
/// `durable_file::replace_file`) or a health probe's (`.health-probe-<tag>`).
fn owner_tag(name: &str) -> Option<&str> {
    if let Some(tag) = name.strip_prefix(PROBE_PREFIX) {
        return Some(tag);
    }
    let mut parts = name
        .strip_prefix('.')?
        .strip_suffix(".tmp")?
        .rsplitn(3, '.');
    let counter = parts.next()?;
    let tag = parts.next()?;
    parts.next()?;
    counter.bytes().all(|b| b.is_ascii_digit()).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_owner_of_temp_and_probe_files() {
        assert_eq!(owner_tag(".manifest.json.1a-2b-0.17.tmp"), Some("1a-2b-0"));
        assert_eq!(owner_tag(".health-probe-1a-2b-0"), Some("1a-2b-0"));
        assert_eq!(owner_tag("manifest.json"), None);
        assert_eq!(owner_tag(".manifest.json.tmp"), None);
        assert_eq!(owner_tag(".x.tag.notanumber.tmp"), None);
    }

    #[test]
    fn sweeps_only_what_dead_instances_left() {
        let root = tempfile::tempdir().expect("tempdir");
        let claimed = |instance: Instance| {
            instance.owner_tag().expect("claim");
            instance
        };
        let live = claimed(Instance::new(root.path()));
        let dead_tag = claimed(Instance::new(root.path())).tag.clone();
        // The second instance was dropped: its lock is released, as a
        // killed process's would be.
        let files = [
            format!(".manifest.json.{dead_tag}.0.tmp"),
            format!(".manifest.json.{}.1.tmp", live.tag),
            ".manifest.json.gone-forever-0.2.tmp".to_owned(),
            "manifest.json".to_owned(),
        ];
        for name in &files {
            fs::write(root.path().join(name), b"x").expect("write");
        }
        let other_live = claimed(Instance::new(root.path()));
        fs::write(
            root.path().join(format!(".m.{}.3.tmp", other_live.tag)),
            b"x",
        )
        .expect("write");

        live.sweep(root.path()).expect("sweep");
        let mut left: Vec<_> = fs::read_dir(root.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n != INSTANCES_DIR)
            .collect();
        left.sort();
        let mut expected = vec![
            format!(".m.{}.3.tmp", other_live.tag),
            format!(".manifest.json.{}.1.tmp", live.tag),
            "manifest.json".to_owned(),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }
}
