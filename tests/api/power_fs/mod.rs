//! A test-only FUSE file system that can lose power, modelled on LazyFS
//! (the one Jepsen uses): written-but-unsynced data lives in memory only,
//! a power cut discards it, and the file system is mounted again from
//! what fsync made durable. It also injects EIO on write and on fsync.
//! See [`model`] for exactly what counts as durable.
//!
//! It runs inside the test process on threads of its own (fuser, mounted
//! with the mount(2) syscall: it needs root and /dev/fuse); the server
//! under test is a child process whose data dir is on the mount.

mod fuse;
pub mod model;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use tempfile::TempDir;

use model::Model;
pub use model::{Durability, Faults, Stats};

/// Why this machine cannot mount it, if it cannot.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("mounting a FUSE file system with mount(2) needs root".into());
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => None,
        Err(err) => Some(format!("cannot open /dev/fuse: {err}")),
    }
}

/// The mounted file system; unmounted when dropped.
pub struct PowerFs {
    model: Arc<Mutex<Model>>,
    session: Option<BackgroundSession>,
    mountpoint: TempDir,
}

impl PowerFs {
    /// Mounts an empty file system on a new temp dir. Files are created
    /// with the caller's uid; `allow_other` lets other users in, under the
    /// kernel's permission checks.
    pub fn mount(durability: Durability) -> Self {
        let mountpoint = tempfile::tempdir().expect("mount point");
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let mut fs = Self {
            model: Arc::new(Mutex::new(Model::new(durability, uid, gid))),
            session: None,
            mountpoint,
        };
        fs.attach();
        fs
    }

    fn attach(&mut self) {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("runstore-powerfs".into()),
            MountOption::DefaultPermissions,
        ];
        config.acl = SessionACL::All;
        let filesystem = fuse::PowerFuse {
            model: self.model.clone(),
        };
        self.session = Some(
            fuser::spawn_mount(filesystem, self.mountpoint.path(), &config)
                .expect("mount the power-loss file system"),
        );
    }

    /// Unmounts, waiting (bounded) while the last processes that had
    /// files open on it finish dying.
    fn detach(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let path = self.mountpoint.path();
        let mut attempts = 0;
        loop {
            match rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => break,
                Err(rustix::io::Errno::BUSY) if attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => {
                    // Lazily, so that the session (dropped here) can end.
                    let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
                    panic!("unmount {}: {err} after {attempts} tries", path.display());
                }
            }
        }
        // The kernel has let go: the session's thread sees the device
        // close and ends.
        session.join().expect("the power-loss file system's thread");
    }

    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// A path on the mount.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The power goes, at once: what is durable now is what the next
    /// mount finds, and every call fails with EIO until then.
    pub fn cut_power(&self) {
        self.model().cut_power();
    }

    /// The reboot: unmounts, keeps only what was durable at the cut, and
    /// mounts that again. Whatever had files open must be gone first.
    pub fn restore_power(&mut self) {
        self.detach();
        self.model().restore_power();
        self.attach();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.model().faults = faults;
    }

    pub fn stats(&self) -> Stats {
        self.model().stats
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Never panic in drop: a failing test is already unwinding.
            if let Err(err) = session.umount_and_join() {
                eprintln!("unmounting {}: {err}", self.mountpoint.path().display());
            }
        }
    }
}
