//! File access that a symbolic link cannot redirect.
//!
//! Two places need it. Reading a backup: a stored file (or a directory on
//! its way) replaced by a symbolic link to something outside the
//! repository must not be read, checksummed and declared intact. Writing
//! a restore: the target directory, or any directory under it, swapped for
//! a link while the restore runs must not send the restore's files, or its
//! cleanup after a failure, somewhere else.
//!
//! Both walk paths one component at a time from a directory handle, with
//! `O_NOFOLLOW` on every component, so a link anywhere below the starting
//! directory is an error, never followed. A [`TargetTree`] walks its
//! root's (resolved) path that way from `/`, keeps the root's handle, and
//! reaches every directory it created from there, checking each is the
//! one it made: files are created relative to those handles, and removing
//! what the restore made goes through them, one entry at a time, so it can
//! only ever remove what this restore created itself, wherever the tree was
//! moved meanwhile.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// Whether an open failed because it met a symbolic link (`ELOOP` from
/// `O_NOFOLLOW`) or found something other than a regular file: the tree
/// was tampered with, which for a backup is damage, not an I/O problem.
pub fn is_not_regular(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ELOOP)
        || error.raw_os_error() == Some(libc::ENOTDIR)
        || error
            .get_ref()
            .is_some_and(|inner| inner.is::<NotRegular>())
}

/// The error of [`open_regular_beneath`] for a directory, device, ...
#[derive(Debug)]
struct NotRegular(PathBuf);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\" is not a regular file", self.0.display())
    }
}

impl std::error::Error for NotRegular {}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a file name holds a NUL byte"))
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`.
fn open_at(
    dir: RawFd,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    loop {
        // SAFETY: `name` is a valid C string; the descriptor is checked.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        match check(fd) {
            // SAFETY: a descriptor just returned by openat, owned by no one else.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

fn open_dir_at(dir: RawFd, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Opens `path` as a directory: every component but the last as the
/// operating system resolves it, the last with `O_NOFOLLOW`.
pub fn open_directory_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let (parent, name) = split_last(path)?;
    let parent = open_plain_directory(parent)?;
    open_dir_at(parent.as_raw_fd(), name)
}

fn open_plain_directory(path: &Path) -> io::Result<OwnedFd> {
    let path = c_name(path.as_os_str())?;
    // SAFETY: a valid C string; the descriptor is checked.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn split_last(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok((parent, name))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("\"{}\" names no file", path.display()),
        )),
    }
}

/// The normal components of a relative path, or an error for anything
/// else (`..`, a root, an empty path).
fn normal_components(relative: &Path) -> io::Result<Vec<&OsStr>> {
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("\"{}\" is not a plain relative path", relative.display()),
                ))
            }
        }
    }
    if parts.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty path"));
    }
    Ok(parts)
}

/// Opens `root/relative` for reading, refusing a symbolic link at `root`'s
/// last component or anywhere in `relative`, and anything but a regular
/// file at the end.
pub fn open_regular_beneath(root: &Path, relative: &Path) -> io::Result<File> {
    let parts = normal_components(relative)?;
    let mut dir = open_directory_nofollow(root)?;
    let (last, parents) = parts
        .split_last()
        .unwrap_or_else(|| unreachable!("checked non-empty"));
    for part in parents {
        dir = open_dir_at(dir.as_raw_fd(), part)?;
    }
    let fd = open_at(dir.as_raw_fd(), last, libc::O_RDONLY, 0)?;
    let file = File::from(fd);
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            NotRegular(relative.to_owned()),
        ));
    }
    Ok(file)
}

/// The device and inode of an open descriptor or of an entry of a
/// directory (not following a link).
fn identity_of_fd(fd: RawFd) -> io::Result<(u64, u64)> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `stat` is written by fstat before it is read.
    check(unsafe { libc::fstat(fd, stat.as_mut_ptr()) })?;
    let stat = unsafe { stat.assume_init() };
    Ok((stat.st_dev, stat.st_ino))
}

fn identity_at(dir: RawFd, name: &OsStr) -> io::Result<(u64, u64)> {
    let name = c_name(name)?;
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: as above.
    check(unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    let stat = unsafe { stat.assume_init() };
    Ok((stat.st_dev, stat.st_ino))
}

fn unlink_at(dir: RawFd, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: a valid C string.
    check(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

fn mkdir_at(dir: RawFd, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: a valid C string.
    check(unsafe { libc::mkdirat(dir, name.as_ptr(), 0o700) }).map(drop)
}

fn is_empty_dir(fd: &OwnedFd) -> io::Result<bool> {
    // Reading the entries through /proc would follow the path again; a
    // duplicate descriptor read with getdents does not.
    let dup = fd.try_clone()?;
    // SAFETY: fdopendir takes ownership of the duplicate descriptor.
    let dir = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if dir.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    let mut empty = true;
    loop {
        // SAFETY: `dir` is a valid DIR stream until closedir.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            empty = false;
            break;
        }
    }
    // SAFETY: closes the stream and the duplicate it owns.
    unsafe { libc::closedir(dir) };
    Ok(empty)
}

/// Opens the absolute directory `path` from `/`, one component at a time,
/// none of them followed if it is a link: for a path already resolved
/// (free of links), a link met on the way means someone put it there.
pub fn open_resolved_directory(path: &Path) -> io::Result<OwnedFd> {
    let mut dir = open_plain_directory(Path::new("/"))?;
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => dir = open_dir_at(dir.as_raw_fd(), part)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "\"{}\" is not an absolute path without \"..\"",
                        path.display()
                    ),
                ))
            }
        }
    }
    Ok(dir)
}

/// A directory tree a restore creates, reached only through handles and
/// never by following a link.
///
/// [`TargetTree::create`] opens (or creates) the root, walking its path
/// from `/` without following links. Every directory and file below it is
/// then made through the handle of its parent, which is reached from the
/// root's handle component by component with `O_NOFOLLOW`, and checked to
/// be the very directory the tree created (device and inode), so neither a
/// link nor a directory moved into place can stand in for it. Only the
/// root's handle stays open: a tree of thousands of directories costs no
/// more descriptors than one. [`TargetTree::remove_created`] undoes
/// exactly what the tree made.
pub struct TargetTree {
    root_path: PathBuf,
    root: OwnedFd,
    /// Directories created under the root, in creation order, with the
    /// identity each had when made.
    dirs: Vec<(PathBuf, (u64, u64))>,
    identities: std::collections::HashMap<PathBuf, (u64, u64)>,
    /// Files (and links) created, relative to the root, in creation order.
    files: Mutex<Vec<PathBuf>>,
    /// Directories above the root created for it, outermost first, each
    /// with the handle of the directory it was made in.
    created_parents: Vec<(CString, OwnedFd)>,
    /// Where the root itself is, to remove it if the tree created it.
    anchor: Option<Anchor>,
}

/// The parent of a root that the tree created.
struct Anchor {
    fd: OwnedFd,
    name: CString,
    identity: (u64, u64),
}

impl TargetTree {
    /// Opens `root` (absolute, resolved: no links on its path) if it is an
    /// empty directory, or creates it with any missing parents (mode
    /// 0700). A link anywhere on its path is refused. If anything fails,
    /// what was created is removed again.
    pub fn create(root: &Path) -> io::Result<Self> {
        if !root.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{}\" is not an absolute path", root.display()),
            ));
        }
        // The nearest existing ancestor, then downwards from its handle.
        let mut missing = Vec::new();
        let mut existing = root;
        loop {
            match std::fs::symlink_metadata(existing) {
                Ok(_) => break,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    let (parent, name) = split_last(existing)?;
                    missing.push(name.to_owned());
                    existing = parent;
                }
                Err(error) => return Err(error),
            }
        }
        missing.reverse();
        let mut created_parents: Vec<(CString, OwnedFd)> = Vec::new();
        let undo_parents = |created: &[(CString, OwnedFd)]| {
            for (name, parent) in created.iter().rev() {
                let _ = unlink_at(
                    parent.as_raw_fd(),
                    OsStr::from_bytes(name.as_bytes()),
                    libc::AT_REMOVEDIR,
                );
            }
        };
        let (root_fd, anchor) = if missing.is_empty() {
            let fd = open_resolved_directory(root)?;
            if !is_empty_dir(&fd)? {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("\"{}\" is not empty", root.display()),
                ));
            }
            (fd, None)
        } else {
            let made = (|| -> io::Result<(OwnedFd, Anchor)> {
                let mut parent = open_resolved_directory(existing)?;
                let (last, above) = missing
                    .split_last()
                    .unwrap_or_else(|| unreachable!("checked non-empty"));
                for name in above {
                    mkdir_at(parent.as_raw_fd(), name)?;
                    let name = c_name(name)?;
                    let child = open_dir_at(parent.as_raw_fd(), OsStr::from_bytes(name.as_bytes()));
                    created_parents.push((name, parent));
                    parent = child?;
                }
                mkdir_at(parent.as_raw_fd(), last)?;
                let fd = open_dir_at(parent.as_raw_fd(), last);
                let anchor_name = c_name(last)?;
                let fd = match fd {
                    Ok(fd) => fd,
                    Err(error) => {
                        let _ = unlink_at(parent.as_raw_fd(), last, libc::AT_REMOVEDIR);
                        return Err(error);
                    }
                };
                let identity = identity_of_fd(fd.as_raw_fd())?;
                Ok((
                    fd,
                    Anchor {
                        fd: parent,
                        name: anchor_name,
                        identity,
                    },
                ))
            })();
            match made {
                Ok((fd, anchor)) => (fd, Some(anchor)),
                Err(error) => {
                    undo_parents(&created_parents);
                    return Err(error);
                }
            }
        };
        let tree = TargetTree {
            root_path: root.to_owned(),
            root: root_fd,
            dirs: Vec::new(),
            identities: std::collections::HashMap::new(),
            files: Mutex::new(Vec::new()),
            created_parents,
            anchor,
        };
        // Restored data directories are private to their owner.
        // SAFETY: a valid descriptor.
        if let Err(error) = check(unsafe { libc::fchmod(tree.root.as_raw_fd(), 0o700) }) {
            let _ = tree.remove_created();
            return Err(error);
        }
        Ok(tree)
    }

    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// A handle of the directory `relative` ("" is the root), reached from
    /// the root without following links and checked to be the directory
    /// the tree created there.
    fn open_dir(&self, relative: &Path) -> io::Result<OwnedFd> {
        let mut dir = self.root.try_clone()?;
        let mut walked = PathBuf::new();
        for part in relative.components() {
            let Component::Normal(part) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a plain relative path",
                ));
            };
            walked.push(part);
            dir = open_dir_at(dir.as_raw_fd(), part)?;
            let expected = self.identities.get(&walked).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "directory \"{}\" was not created by the restore",
                        walked.display()
                    ),
                )
            })?;
            if identity_of_fd(dir.as_raw_fd())? != *expected {
                return Err(io::Error::other(format!(
                    "directory \"{}\" was replaced while the restore ran",
                    walked.display()
                )));
            }
        }
        Ok(dir)
    }

    /// Creates `relative` (its parent must have been made first).
    pub fn make_dir(&mut self, relative: &Path) -> io::Result<()> {
        if self.identities.contains_key(relative) {
            return Ok(());
        }
        let (parent, name) = split_relative(relative)?;
        let parent_fd = self.open_dir(parent)?;
        mkdir_at(parent_fd.as_raw_fd(), name)?;
        let fd = open_dir_at(parent_fd.as_raw_fd(), name)?;
        let identity = identity_of_fd(fd.as_raw_fd())?;
        self.dirs.push((relative.to_owned(), identity));
        self.identities.insert(relative.to_owned(), identity);
        Ok(())
    }

    /// Creates the new file `relative` (mode 0600) for writing.
    pub fn create_file(&self, relative: &Path) -> io::Result<File> {
        let (parent, name) = split_relative(relative)?;
        let dir = self.open_dir(parent)?;
        let fd = open_at(
            dir.as_raw_fd(),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(relative.to_owned());
        Ok(File::from(fd))
    }

    /// Opens the existing file `relative`, which the tree created, for
    /// reading and writing.
    pub fn open_created_file(&self, relative: &Path) -> io::Result<File> {
        let (parent, name) = split_relative(relative)?;
        let dir = self.open_dir(parent)?;
        let fd = open_at(dir.as_raw_fd(), name, libc::O_RDWR, 0)?;
        Ok(File::from(fd))
    }

    /// A symbolic link `relative` pointing at `destination`.
    pub fn symlink(&self, destination: &Path, relative: &Path) -> io::Result<()> {
        let (parent, name) = split_relative(relative)?;
        let dir = self.open_dir(parent)?;
        let c_destination = c_name(destination.as_os_str())?;
        let c = c_name(name)?;
        // SAFETY: valid C strings and descriptor.
        check(unsafe { libc::symlinkat(c_destination.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(relative.to_owned());
        Ok(())
    }

    /// Removes the file `relative`, which the tree created.
    pub fn remove_created_file(&self, relative: &Path) -> io::Result<()> {
        let (parent, name) = split_relative(relative)?;
        let dir = self.open_dir(parent)?;
        unlink_at(dir.as_raw_fd(), name, 0)?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|file| file != relative);
        Ok(())
    }

    /// fsyncs every directory of the tree and the one holding the root.
    pub fn sync_directories(&self) -> io::Result<()> {
        File::from(self.root.try_clone()?).sync_all()?;
        for (dir, _) in &self.dirs {
            File::from(self.open_dir(dir)?).sync_all()?;
        }
        if let Some(anchor) = &self.anchor {
            File::from(anchor.fd.try_clone()?).sync_all()?;
        }
        Ok(())
    }

    /// Removes what the tree created, newest first, through handles
    /// reached as every operation reaches them: files, directories (only
    /// if empty, so nothing someone else put there is removed), the root if
    /// the tree created it and it is still where it was, and the parents
    /// created for it. Best effort; returns the first problem met.
    pub fn remove_created(self) -> io::Result<()> {
        let mut first_error: Option<io::Error> = None;
        let mut note = |result: io::Result<()>| {
            if let Err(error) = result {
                if error.kind() != io::ErrorKind::NotFound {
                    first_error.get_or_insert(error);
                }
            }
        };
        let files = std::mem::take(&mut *self.files.lock().unwrap_or_else(|e| e.into_inner()));
        for file in files.iter().rev() {
            note(
                split_relative(file).and_then(|(parent, name)| {
                    unlink_at(self.open_dir(parent)?.as_raw_fd(), name, 0)
                }),
            );
        }
        for (dir, _) in self.dirs.iter().rev() {
            note(split_relative(dir).and_then(|(parent, name)| {
                unlink_at(self.open_dir(parent)?.as_raw_fd(), name, libc::AT_REMOVEDIR)
            }));
        }
        if let Some(anchor) = &self.anchor {
            let name = OsStr::from_bytes(anchor.name.as_bytes());
            match identity_at(anchor.fd.as_raw_fd(), name) {
                Ok(found) if found == anchor.identity => {
                    note(unlink_at(anchor.fd.as_raw_fd(), name, libc::AT_REMOVEDIR))
                }
                // Moved or replaced since: not ours to remove any more.
                Ok(_) => {}
                Err(error) => note(Err(error)),
            }
        }
        for (name, parent) in self.created_parents.iter().rev() {
            note(unlink_at(
                parent.as_raw_fd(),
                OsStr::from_bytes(name.as_bytes()),
                libc::AT_REMOVEDIR,
            ));
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The parent (possibly "") and last name of a plain relative path.
fn split_relative(relative: &Path) -> io::Result<(&Path, &OsStr)> {
    normal_components(relative)?;
    let parent = relative.parent().unwrap_or(Path::new(""));
    let name = relative
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    Ok((parent, name))
}
