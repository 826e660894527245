//! What the power-loss file system holds: for every file and directory,
//! what a running system sees and what a power cut would leave of it.
//!
//! The durability model (LazyFS's for data, and the weakest POSIX allows):
//! - a file's data and size become durable when the file is fsynced
//!   (`fsync` and `fdatasync` alike); until then they live in memory only;
//! - under [`Durability::Posix`] a directory's entries (creations, unlinks,
//!   renames) become durable when the directory is fsynced, whatever was
//!   done to the files themselves; under [`Durability::Journaled`] any
//!   successful fsync also commits every entry changed before it, as the
//!   metadata journal of ext4 or XFS does;
//! - a failed fsync behaves as Linux's does (fsyncgate): the dirty data is
//!   dropped, never written, while reads still see it, and the next fsync
//!   succeeds without it;
//! - other metadata (mode, owner, times) counts as durable at once: nothing
//!   the product relies on hangs on it.
//!
//! A power cut freezes what is durable and fails every later call with EIO;
//! [`Model::restore_power`] then rebuilds the tree from what was durable,
//! as a remount after the reboot would find it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    ffi::{OsStr, OsString},
    time::SystemTime,
};

/// The unit of dirty tracking: what one fsync copies at a time.
const PAGE: usize = 4096;
pub const ROOT: u64 = 1;

/// An errno for the caller.
pub type Errno = i32;
pub type Result<T> = std::result::Result<T, Errno>;

/// What fsync makes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A file's data on its fsync; a directory's entries on the directory's.
    Posix,
    /// As Posix, and every fsync commits all directory entries changed
    /// before it (a journaling file system's metadata). PostgreSQL needs
    /// it: it fsyncs a new database's directory but not `base/`, the
    /// directory holding its entry.
    Journaled,
    /// `fsync` and `fdatasync` report success and make nothing durable: the
    /// harness must then find lost acknowledged runs.
    FsyncIsNoop,
}

/// Faults injected on demand.
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// `write(2)` fails with EIO (writeback of mmapped pages is spared:
    /// its errors reach nobody but a later fsync).
    pub fail_writes: bool,
    /// The next this many fsyncs of files fail with EIO, dropping the dirty
    /// data they would have made durable.
    pub fail_fsyncs: u32,
}

/// Counters, for the tests' reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub fsyncs: u64,
    pub failed_fsyncs: u64,
    /// Dirty pages dropped by failed fsyncs.
    pub dropped_pages: u64,
    pub failed_writes: u64,
    pub power_cuts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Meta {
    pub fn new(perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Self {
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }
}

/// What `stat` reports of a node.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub meta: Meta,
}

#[derive(Debug, Default)]
struct FileBody {
    /// What reads see.
    data: Vec<u8>,
    /// Pages written since the last fsync.
    dirty: BTreeSet<usize>,
    /// The shortest the file was since the last fsync: durable bytes past
    /// it were cut off by a truncate.
    shortest: usize,
    /// What a power cut leaves.
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct DirBody {
    parent: u64,
    entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Body {
    File(FileBody),
    Dir(DirBody),
}

#[derive(Debug)]
struct Node {
    meta: Meta,
    body: Body,
}

impl Node {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        }
    }
}

#[derive(Debug)]
pub struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    durability: Durability,
    pub faults: Faults,
    pub stats: Stats,
    powered: bool,
}

impl Model {
    /// An empty file system whose root belongs to `uid`:`gid`.
    pub fn new(durability: Durability, uid: u32, gid: u32) -> Self {
        let root = Node {
            meta: Meta::new(0o755, uid, gid),
            body: Body::Dir(DirBody {
                parent: ROOT,
                ..DirBody::default()
            }),
        };
        Self {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            durability,
            faults: Faults::default(),
            stats: Stats::default(),
            powered: true,
        }
    }

    fn powered(&self) -> Result<()> {
        if self.powered { Ok(()) } else { Err(libc::EIO) }
    }

    fn node(&self, ino: u64) -> Result<&Node> {
        self.powered()?;
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node> {
        self.powered()?;
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&DirBody> {
        match &self.node(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirBody> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileBody> {
        match &mut self.node_mut(ino)?.body {
            Body::File(file) => Ok(file),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn attr(&self, ino: u64) -> Result<Attr> {
        let node = self.node(ino)?;
        let size = match &node.body {
            Body::File(file) => file.data.len() as u64,
            Body::Dir(dir) => dir.entries.len() as u64,
        };
        Ok(Attr {
            ino,
            kind: node.kind(),
            size,
            meta: node.meta,
        })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        self.attr(ino)
    }

    /// Creates a file or directory named `name` in `parent`.
    pub fn create(&mut self, parent: u64, name: &OsStr, kind: Kind, meta: Meta) -> Result<Attr> {
        let dir = self.dir_mut(parent)?;
        if dir.entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        let body = match kind {
            Kind::File => Body::File(FileBody::default()),
            Kind::Dir => Body::Dir(DirBody {
                parent,
                ..DirBody::default()
            }),
        };
        self.nodes.insert(ino, Node { meta, body });
        self.attr(ino)
    }

    /// Removes the entry `name` (a file, or with `dir` an empty directory).
    /// The node itself stays until the next power cut: open descriptors
    /// still reach it.
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        match (&self.node(ino)?.body, dir) {
            (Body::File(_), true) => return Err(libc::ENOTDIR),
            (Body::Dir(_), false) => return Err(libc::EISDIR),
            (Body::Dir(d), true) if !d.entries.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        Ok(())
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<()> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(libc::ENOENT)?;
        if let Some(&target) = self.dir(new_parent)?.entries.get(new_name) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            if target != ino {
                match (self.node(ino)?.kind(), &self.node(target)?.body) {
                    (Kind::File, Body::Dir(_)) => return Err(libc::EISDIR),
                    (Kind::Dir, Body::File(_)) => return Err(libc::ENOTDIR),
                    (_, Body::Dir(d)) if !d.entries.is_empty() => return Err(libc::ENOTEMPTY),
                    _ => {}
                }
            }
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        if let Body::Dir(dir) = &mut self.node_mut(ino)?.body {
            dir.parent = new_parent;
        }
        Ok(())
    }

    /// `(ino, kind, name)` of every entry, `.` and `..` first.
    pub fn list(&self, ino: u64) -> Result<Vec<(u64, Kind, OsString)>> {
        let dir = self.dir(ino)?;
        let mut entries = vec![
            (ino, Kind::Dir, OsString::from(".")),
            (dir.parent, Kind::Dir, OsString::from("..")),
        ];
        for (name, &child) in &dir.entries {
            entries.push((child, self.node(child)?.kind(), name.clone()));
        }
        Ok(entries)
    }

    pub fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file = self.file_mut(ino)?;
        let start = (offset as usize).min(file.data.len());
        let end = start.saturating_add(size as usize).min(file.data.len());
        Ok(file.data[start..end].to_vec())
    }

    /// `write(2)`; `writeback` marks the page cache writing mmapped pages.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8], writeback: bool) -> Result<u32> {
        self.powered()?;
        if self.faults.fail_writes && !writeback {
            self.stats.failed_writes += 1;
            return Err(libc::EIO);
        }
        let file = self.file_mut(ino)?;
        let start = offset as usize;
        let end = start + data.len();
        if file.data.len() < end {
            file.data.resize(end, 0);
        }
        file.data[start..end].copy_from_slice(data);
        if !data.is_empty() {
            file.dirty.extend(start / PAGE..=(end - 1) / PAGE);
        }
        let now = SystemTime::now();
        let meta = &mut self.node_mut(ino)?.meta;
        meta.mtime = now;
        meta.ctime = now;
        Ok(data.len() as u32)
    }

    pub fn set_size(&mut self, ino: u64, size: u64) -> Result<()> {
        let file = self.file_mut(ino)?;
        let size = size as usize;
        file.data.resize(size, 0);
        file.shortest = file.shortest.min(size);
        Ok(())
    }

    pub fn set_meta(&mut self, ino: u64, change: impl FnOnce(&mut Meta)) -> Result<()> {
        change(&mut self.node_mut(ino)?.meta);
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file or directory.
    pub fn fsync(&mut self, ino: u64) -> Result<()> {
        self.powered()?;
        self.stats.fsyncs += 1;
        let fail = self.faults.fail_fsyncs > 0 && self.node(ino)?.kind() == Kind::File;
        if fail {
            self.faults.fail_fsyncs -= 1;
            self.stats.failed_fsyncs += 1;
        }
        let noop = self.durability == Durability::FsyncIsNoop;
        let node = self.node_mut(ino)?;
        match &mut node.body {
            Body::File(file) if fail => {
                // Linux marks the pages clean without writing them.
                let dropped = file.dirty.len() as u64;
                file.dirty.clear();
                file.shortest = file.data.len();
                self.stats.dropped_pages += dropped;
                return Err(libc::EIO);
            }
            _ if noop => {}
            Body::File(file) => {
                file.durable.truncate(file.shortest);
                file.durable.resize(file.data.len(), 0);
                for page in std::mem::take(&mut file.dirty) {
                    let start = page * PAGE;
                    let end = (start + PAGE).min(file.data.len());
                    if start < end {
                        file.durable[start..end].copy_from_slice(&file.data[start..end]);
                    }
                }
                file.shortest = file.data.len();
            }
            Body::Dir(dir) => dir.durable = dir.entries.clone(),
        }
        if self.durability == Durability::Journaled {
            for node in self.nodes.values_mut() {
                if let Body::Dir(dir) = &mut node.body {
                    dir.durable = dir.entries.clone();
                }
            }
        }
        Ok(())
    }

    /// The power goes: what is durable now is all that will be left, and
    /// every call fails with EIO until [`Model::restore_power`].
    pub fn cut_power(&mut self) {
        self.powered = false;
        self.stats.power_cuts += 1;
    }

    /// The machine comes back: the tree is what was durable at the cut.
    /// A node reachable twice (a rename durable in both directories) keeps
    /// its first entry only.
    pub fn restore_power(&mut self) {
        let mut old = std::mem::take(&mut self.nodes);
        let mut seen = HashSet::from([ROOT]);
        let mut queue = vec![(ROOT, ROOT)];
        while let Some((ino, parent)) = queue.pop() {
            let Some(mut node) = old.remove(&ino) else {
                continue;
            };
            match &mut node.body {
                Body::File(file) => {
                    file.data = file.durable.clone();
                    file.dirty.clear();
                    file.shortest = file.data.len();
                }
                Body::Dir(dir) => {
                    dir.parent = parent;
                    dir.durable.retain(|_, child| seen.insert(*child));
                    dir.entries = dir.durable.clone();
                    queue.extend(dir.entries.values().map(|&child| (child, ino)));
                }
            }
            self.nodes.insert(ino, node);
        }
        self.faults = Faults::default();
        self.powered = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model::new(Durability::Posix, 0, 0)
    }

    fn file(model: &mut Model, parent: u64, name: &str) -> u64 {
        model
            .create(parent, name.as_ref(), Kind::File, Meta::new(0o600, 0, 0))
            .expect("create")
            .ino
    }

    fn contents(model: &mut Model, parent: u64, name: &str) -> Option<Vec<u8>> {
        let ino = model.lookup(parent, name.as_ref()).ok()?.ino;
        Some(model.read(ino, 0, u32::MAX).expect("read"))
    }

    #[test]
    fn only_fsynced_data_under_fsynced_entries_survives_a_cut() {
        let mut m = model();
        let synced = file(&mut m, ROOT, "synced");
        let unsynced_entry = file(&mut m, ROOT, "entry-not-synced");
        m.write(synced, 0, b"durable", false).unwrap();
        m.fsync(synced).unwrap();
        m.fsync(ROOT).unwrap(); // both entries durable now
        m.write(synced, 7, b" volatile", false).unwrap();
        m.write(unsynced_entry, 0, b"data", false).unwrap();
        m.fsync(unsynced_entry).unwrap();
        let late = file(&mut m, ROOT, "late");
        m.fsync(late).unwrap(); // its entry never is
        m.cut_power();
        assert_eq!(m.attr(synced).err(), Some(libc::EIO), "dead until restored");
        m.restore_power();
        assert_eq!(contents(&mut m, ROOT, "synced").unwrap(), b"durable");
        assert_eq!(contents(&mut m, ROOT, "entry-not-synced").unwrap(), b"data");
        assert_eq!(contents(&mut m, ROOT, "late"), None);
    }

    #[test]
    fn an_entry_synced_before_its_data_comes_back_empty() {
        let mut m = model();
        let ino = file(&mut m, ROOT, "f");
        m.fsync(ROOT).unwrap();
        m.write(ino, 0, b"never synced", false).unwrap();
        m.cut_power();
        m.restore_power();
        assert_eq!(contents(&mut m, ROOT, "f").unwrap(), b"");
    }

    #[test]
    fn a_failed_fsync_drops_the_dirty_data_and_the_next_one_succeeds_without_it() {
        let mut m = model();
        let ino = file(&mut m, ROOT, "f");
        m.fsync(ROOT).unwrap();
        m.write(ino, 0, &[b'a'; PAGE], false).unwrap();
        m.faults.fail_fsyncs = 1;
        assert_eq!(m.fsync(ino), Err(libc::EIO));
        assert_eq!(m.read(ino, 0, 1).unwrap(), b"a", "reads still see it");
        m.write(ino, PAGE as u64, b"b", false).unwrap();
        assert_eq!(m.fsync(ino), Ok(()));
        m.cut_power();
        m.restore_power();
        let mut expected = vec![0; PAGE];
        expected.push(b'b');
        assert_eq!(contents(&mut m, ROOT, "f").unwrap(), expected);
        assert_eq!(m.stats.dropped_pages, 1);
    }

    #[test]
    fn a_truncate_is_durable_with_the_next_fsync() {
        let mut m = model();
        let ino = file(&mut m, ROOT, "f");
        m.fsync(ROOT).unwrap();
        m.write(ino, 0, b"0123456789", false).unwrap();
        m.fsync(ino).unwrap();
        m.set_size(ino, 2).unwrap();
        m.set_size(ino, 6).unwrap();
        m.fsync(ino).unwrap();
        m.cut_power();
        m.restore_power();
        assert_eq!(contents(&mut m, ROOT, "f").unwrap(), b"01\0\0\0\0");
    }

    #[test]
    fn a_rename_is_durable_once_its_directory_is_fsynced() {
        let mut m = model();
        let ino = file(&mut m, ROOT, "tmp");
        m.write(ino, 0, b"new", false).unwrap();
        m.fsync(ino).unwrap();
        m.fsync(ROOT).unwrap();
        m.rename(ROOT, "tmp".as_ref(), ROOT, "final".as_ref(), false)
            .unwrap();
        m.cut_power();
        m.restore_power();
        assert!(contents(&mut m, ROOT, "final").is_none());
        assert_eq!(contents(&mut m, ROOT, "tmp").unwrap(), b"new");
        m.rename(ROOT, "tmp".as_ref(), ROOT, "final".as_ref(), false)
            .unwrap();
        m.fsync(ROOT).unwrap();
        m.cut_power();
        m.restore_power();
        assert_eq!(contents(&mut m, ROOT, "final").unwrap(), b"new");
    }

    #[test]
    fn journaled_any_fsync_commits_every_entry_made_before_it() {
        let mut m = Model::new(Durability::Journaled, 0, 0);
        let dir = m
            .create(ROOT, "d".as_ref(), Kind::Dir, Meta::new(0o700, 0, 0))
            .unwrap()
            .ino;
        let ino = file(&mut m, dir, "f");
        m.write(ino, 0, b"x", false).unwrap();
        m.fsync(ino).unwrap();
        let late = file(&mut m, dir, "late");
        m.write(late, 0, b"y", false).unwrap();
        m.cut_power();
        m.restore_power();
        let dir = m.lookup(ROOT, "d".as_ref()).expect("d survives").ino;
        assert_eq!(contents(&mut m, dir, "f").unwrap(), b"x");
        assert_eq!(contents(&mut m, dir, "late"), None);
    }

    #[test]
    fn with_fsync_a_noop_nothing_survives() {
        let mut m = Model::new(Durability::FsyncIsNoop, 0, 0);
        let ino = file(&mut m, ROOT, "f");
        m.write(ino, 0, b"x", false).unwrap();
        m.fsync(ino).unwrap();
        m.fsync(ROOT).unwrap();
        m.cut_power();
        m.restore_power();
        assert!(contents(&mut m, ROOT, "f").is_none());
    }

    #[test]
    fn injected_write_errors_spare_page_cache_writeback() {
        let mut m = model();
        let ino = file(&mut m, ROOT, "f");
        m.faults.fail_writes = true;
        assert_eq!(m.write(ino, 0, b"x", false), Err(libc::EIO));
        assert_eq!(m.write(ino, 0, b"y", true), Ok(1));
        assert_eq!(m.stats.failed_writes, 1);
    }
}
