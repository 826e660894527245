//! Crash-safe file primitives: a file or directory reported written survives
//! `kill -9` and power loss, and readers never see a partial file.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// Data files are private to the service's user.
pub const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Creates a directory and its missing parents, readable only by the
/// service's user.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Flushes a directory's entries, making creations and renames in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes sure `root/components...` exists as directories, fsyncing the parent
/// of every directory it creates so the new entries survive a crash.
pub fn ensure_dirs(root: &Path, components: &[&str]) -> io::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    if components.is_empty() {
        return Ok(dir);
    }
    let full: PathBuf = components.iter().fold(dir.clone(), |path, c| path.join(c));
    if fs::metadata(&full).is_ok_and(|meta| meta.is_dir()) {
        return Ok(full);
    }
    for component in components {
        let parent = dir.clone();
        dir.push(component);
        match DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Ok(()) => sync_dir(&parent)?,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::metadata(&dir)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} exists and is not a directory", dir.display()),
                    ));
                }
            }
            Err(err) => return Err(err),
        }
    }
    Ok(dir)
}

/// Replaces `dir/name` with `bytes` atomically: temp file, fsync, rename,
/// fsync of the directory. On failure the temp file is removed and any
/// previous content of `dir/name` is left as it was. `owner` (an instance
/// tag) goes into the temp file's name, so a crash's leftover can be told
/// from a write in progress.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8], owner: &str) -> io::Result<()> {
    let temp = dir.join(temp_name(name, owner));
    let result = write_new(&temp, bytes).and_then(|()| fs::rename(&temp, dir.join(name)));
    if result.is_err() {
        // Best effort: the original error is what the caller needs to see.
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_dir(dir)
}

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A name no other writer (thread or process) uses at the same time, hidden
/// from directory listings of finished files: `.<name>.<owner>.<n>.tmp`.
fn temp_name(name: &str, owner: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{owner}.{n}.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        replace_file(dir.path(), "m.json", b"one", "t").expect("first write");
        replace_file(dir.path(), "m.json", b"two", "t").expect("second write");
        assert_eq!(fs::read(dir.path().join("m.json")).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["m.json"]);
    }

    #[test]
    fn ensure_dirs_reports_a_file_in_the_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("runs"), b"not a dir").expect("write");
        let err = ensure_dirs(dir.path(), &["runs", "t"]).expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
    }
}
