//! Files opened confined to the workspace. Every file the sidecar serves,
//! deletes or indexes is reached from the workspace's directory one path
//! component at a time (`openat` with `O_NOFOLLOW`): a symbolic link or `..`
//! at any level is refused, not followed, so no name a client or the kernel
//! chooses can lead outside. Only regular files are read, and their size is
//! known (`fstat` of the opened file) before a byte is read; a FIFO, socket
//! or device is refused without blocking (`O_NONBLOCK`).
//!
//! The kernel shares the workspace and may swap a directory for a link at
//! any moment: because each component is opened relative to the descriptor
//! of its parent, such a swap makes the open fail, never escape.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

const MAX_PATH_BYTES: usize = 4096;

/// Why a confined file could not be used; each message names the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfinedError {
    #[error("invalid path {path:?}: {reason}")]
    Invalid { path: String, reason: &'static str },
    #[error("{0}: no such file")]
    NotFound(String),
    #[error("{0}: a symbolic link on the way; links are not followed inside the workspace")]
    Symlink(String),
    #[error("{path}: not a regular file but a {kind}")]
    NotRegular { path: String, kind: Kind },
    #[error("{path}: {size} bytes, over the limit of {limit}")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// What a directory entry is, read without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symbolic link",
            Kind::Fifo => "FIFO",
            Kind::Socket => "socket",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
        })
    }
}

impl Kind {
    fn of_mode(mode: u32) -> Kind {
        match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFIFO => Kind::Fifo,
            SFlag::S_IFSOCK => Kind::Socket,
            SFlag::S_IFCHR => Kind::CharDevice,
            SFlag::S_IFBLK => Kind::BlockDevice,
            _ => Kind::File,
        }
    }
}

/// A file's kind, size and modification time, read without following links.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    pub kind: Kind,
    pub size: u64,
    pub modified: SystemTime,
}

impl Info {
    fn of(st: &FileStat) -> Info {
        let modified = if st.st_mtime >= 0 {
            SystemTime::UNIX_EPOCH
                + Duration::new(st.st_mtime as u64, st.st_mtime_nsec.clamp(0, 999_999_999) as u32)
        } else {
            SystemTime::UNIX_EPOCH
        };
        Info {
            kind: Kind::of_mode(st.st_mode),
            size: st.st_size.max(0) as u64,
            modified,
        }
    }
}

/// The normalised relative form of a client's path: not absolute, no `..`,
/// no NUL, no empty name; `.` components dropped.
pub fn relative(input: &str) -> Result<PathBuf, ConfinedError> {
    let bad = |reason: &'static str| ConfinedError::Invalid {
        path: input.chars().take(200).collect(),
        reason,
    };
    if input.trim().is_empty() {
        return Err(bad("is empty"));
    }
    if input.len() > MAX_PATH_BYTES {
        return Err(bad("is too long"));
    }
    if input.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if input.starts_with('/') || input.starts_with('\\') || Path::new(input).is_absolute() {
        return Err(bad(
            "absolute paths are refused; give a path relative to the workspace",
        ));
    }
    let mut out = PathBuf::new();
    for c in Path::new(input).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("`..` is refused; paths stay inside the workspace")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("absolute paths are refused")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names no file"));
    }
    Ok(out)
}

fn shown(rel: &Path) -> String {
    let s = rel.to_string_lossy();
    if s.is_empty() {
        ".".into()
    } else {
        s.into_owned()
    }
}

/// The workspace directory, held open: every path is resolved from it.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

/// The parent directory of a file and the file's own name.
struct Parent {
    fd: OwnedFd,
    name: PathBuf,
}

impl Root {
    /// Opens (creating when missing) the workspace directory.
    pub fn open(path: &Path) -> std::io::Result<Root> {
        std::fs::create_dir_all(path)?;
        let path = std::fs::canonicalize(path)?;
        let dir = File::open(&path)?;
        if !dir.metadata()?.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        Ok(Root {
            dir: dir.into(),
            path,
        })
    }

    /// The workspace's canonical path (for messages and for tools that must
    /// name it, such as a file watcher).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(rel: &Path, e: Errno) -> ConfinedError {
        let path = shown(rel);
        match e {
            Errno::ENOENT => ConfinedError::NotFound(path),
            Errno::ELOOP => ConfinedError::Symlink(path),
            other => ConfinedError::Io {
                path,
                message: other.desc().to_string(),
            },
        }
    }

    /// Opens the directory `rel` (empty: the workspace itself), refusing a
    /// link or a non-directory at every level.
    pub fn dir(&self, rel: &Path) -> Result<OwnedFd, ConfinedError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        // A descriptor of its own (not a dup, which would share the read
        // offset of the directory with every other listing).
        let mut cur = openat(self.dir.as_fd(), ".", flags, Mode::empty()).map_err(|e| Self::err(rel, e))?;
        let mut walked = PathBuf::new();
        for c in rel.components() {
            let part = match c {
                Component::Normal(p) => p,
                Component::CurDir => continue,
                _ => {
                    return Err(ConfinedError::Invalid {
                        path: shown(rel),
                        reason: "only plain names inside the workspace",
                    })
                }
            };
            walked.push(part);
            cur = match openat(cur.as_fd(), part, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
                    return Err(match fstatat(cur.as_fd(), part, AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) if Kind::of_mode(st.st_mode) == Kind::Symlink => {
                            ConfinedError::Symlink(shown(&walked))
                        }
                        Ok(st) => ConfinedError::NotRegular {
                            path: shown(&walked),
                            kind: Kind::of_mode(st.st_mode),
                        },
                        Err(e) => Self::err(&walked, e),
                    })
                }
                Err(e) => return Err(Self::err(&walked, e)),
            };
        }
        Ok(cur)
    }

    fn parent(&self, rel: &Path) -> Result<Parent, ConfinedError> {
        let name = match rel.file_name() {
            Some(n)
                if rel
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) =>
            {
                n
            }
            _ => {
                return Err(ConfinedError::Invalid {
                    path: shown(rel),
                    reason: "names no file inside the workspace",
                })
            }
        };
        let dir = rel.parent().unwrap_or(Path::new(""));
        Ok(Parent {
            fd: self.dir(dir)?,
            name: PathBuf::from(name),
        })
    }

    /// Kind, size and time of `rel`, not following a link at any level.
    pub fn info(&self, rel: &Path) -> Result<Info, ConfinedError> {
        let p = self.parent(rel)?;
        fstatat(p.fd.as_fd(), p.name.as_path(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(|st| Info::of(&st))
            .map_err(|e| Self::err(rel, e))
    }

    /// `rel` (the entry `p.name` of its parent) is a regular file, seen
    /// without following a link; a link or anything else is refused.
    fn regular(p: &Parent, rel: &Path) -> Result<(), ConfinedError> {
        let st = fstatat(p.fd.as_fd(), p.name.as_path(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Self::err(rel, e))?;
        match Kind::of_mode(st.st_mode) {
            Kind::File => Ok(()),
            Kind::Symlink => Err(ConfinedError::Symlink(shown(rel))),
            kind => Err(ConfinedError::NotRegular {
                path: shown(rel),
                kind,
            }),
        }
    }

    /// Opens the regular file `rel` for reading; its size is in the `Info`.
    pub fn open_file(&self, rel: &Path) -> Result<(File, Info), ConfinedError> {
        let p = self.parent(rel)?;
        Self::regular(&p, rel)?;
        let flags =
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let fd =
            openat(p.fd.as_fd(), p.name.as_path(), flags, Mode::empty()).map_err(|e| Self::err(rel, e))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| ConfinedError::Io {
            path: shown(rel),
            message: e.to_string(),
        })?;
        if !meta.is_file() {
            // Swapped between the check and the open.
            return Err(ConfinedError::NotRegular {
                path: shown(rel),
                kind: Kind::of_mode(std::os::unix::fs::MetadataExt::mode(&meta)),
            });
        }
        let info = Info {
            kind: Kind::File,
            size: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        };
        Ok((file, info))
    }

    /// The whole content of the regular file `rel`, at most `limit` bytes
    /// (refused before reading when the file is larger).
    pub fn read(&self, rel: &Path, limit: u64) -> Result<(Vec<u8>, Info), ConfinedError> {
        let (file, info) = self.open_file(rel)?;
        if info.size > limit {
            return Err(ConfinedError::TooLarge {
                path: shown(rel),
                size: info.size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(info.size as usize);
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ConfinedError::Io {
                path: shown(rel),
                message: e.to_string(),
            })?;
        if bytes.len() as u64 > limit {
            return Err(ConfinedError::TooLarge {
                path: shown(rel),
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok((bytes, info))
    }

    /// Removes the regular file `rel` (never a link, a directory or a
    /// special file).
    pub fn remove_file(&self, rel: &Path) -> Result<(), ConfinedError> {
        let p = self.parent(rel)?;
        Self::regular(&p, rel)?;
        nix::unistd::unlinkat(
            p.fd.as_fd(),
            p.name.as_path(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| Self::err(rel, e))
    }

    /// Makes the directory `rel` (and its parents) inside the workspace,
    /// refusing links on the way.
    pub fn make_dirs(&self, rel: &Path) -> Result<(), ConfinedError> {
        let mut walked = PathBuf::new();
        for c in rel.components() {
            let Component::Normal(part) = c else { continue };
            let parent = self.dir(&walked)?;
            walked.push(part);
            match nix::sys::stat::mkdirat(parent.as_fd(), part, Mode::from_bits_truncate(0o775)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(Self::err(&walked, e)),
            }
        }
        self.dir(rel).map(drop)
    }

    /// Writes `bytes` to the regular file `rel` atomically: a temp file in
    /// the same directory, fsynced, renamed over `rel`, the directory
    /// fsynced. With `keep`, an existing file is left as it is and only its
    /// modification time becomes now; returns whether a file was written.
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8], keep: bool) -> Result<bool, ConfinedError> {
        use std::io::Write;
        let p = self.parent(rel)?;
        let io = |e: std::io::Error| ConfinedError::Io {
            path: shown(rel),
            message: e.to_string(),
        };
        if keep {
            match fstatat(p.fd.as_fd(), p.name.as_path(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if Kind::of_mode(st.st_mode) == Kind::File => {
                    let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
                    let fd = openat(p.fd.as_fd(), p.name.as_path(), flags, Mode::empty())
                        .map_err(|e| Self::err(rel, e))?;
                    File::from(fd).set_modified(SystemTime::now()).map_err(io)?;
                    return Ok(false);
                }
                Ok(st) => {
                    let kind = Kind::of_mode(st.st_mode);
                    return Err(if kind == Kind::Symlink {
                        ConfinedError::Symlink(shown(rel))
                    } else {
                        ConfinedError::NotRegular {
                            path: shown(rel),
                            kind,
                        }
                    });
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(Self::err(rel, e)),
            }
        }
        let tmp = PathBuf::from(format!(
            ".{}.{}.tmp",
            p.name.to_string_lossy(),
            crate::util::random_hex(6)
        ));
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            p.fd.as_fd(),
            tmp.as_path(),
            flags,
            Mode::from_bits_truncate(0o664),
        )
        .map_err(|e| Self::err(rel, e))?;
        let result = (|| {
            let mut f = File::from(fd);
            f.write_all(bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
            drop(f);
            nix::fcntl::renameat(p.fd.as_fd(), tmp.as_path(), p.fd.as_fd(), p.name.as_path())
                .map_err(|e| Self::err(rel, e))?;
            nix::unistd::fsync(p.fd.as_fd()).map_err(|e| Self::err(rel, e))
        })();
        if result.is_err() {
            let _ = nix::unistd::unlinkat(
                p.fd.as_fd(),
                tmp.as_path(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        result.map(|()| true)
    }

    /// The entries of directory `rel`, by name and kind (links not followed).
    pub fn list(&self, rel: &Path) -> Result<Vec<(String, Kind)>, ConfinedError> {
        let fd = self.dir(rel)?;
        let probe = fd.try_clone().map_err(|e| ConfinedError::Io {
            path: shown(rel),
            message: e.to_string(),
        })?;
        let dir = nix::dir::Dir::from_fd(fd).map_err(|e| Self::err(rel, e))?;
        let mut out = Vec::new();
        for ent in dir {
            let ent = ent.map_err(|e| Self::err(rel, e))?;
            let name = OsStr::from_bytes(ent.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            use nix::dir::Type;
            let kind = match ent.file_type() {
                Some(Type::File) => Kind::File,
                Some(Type::Directory) => Kind::Dir,
                Some(Type::Symlink) => Kind::Symlink,
                Some(Type::Fifo) => Kind::Fifo,
                Some(Type::Socket) => Kind::Socket,
                Some(Type::CharacterDevice) => Kind::CharDevice,
                Some(Type::BlockDevice) => Kind::BlockDevice,
                None => match fstatat(probe.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => Kind::of_mode(st.st_mode),
                    Err(_) => continue,
                },
            };
            out.push((name.to_string_lossy().into_owned(), kind));
        }
        out.sort();
        Ok(out)
    }

    /// Every entry under `rel` (at any depth, hidden ones too, links not
    /// followed) whose name `wanted` accepts, whatever its kind. Stops at
    /// `limits`, and says so: a walk that did not see everything is
    /// `complete: false`, with the reason.
    pub fn walk(&self, rel: &Path, wanted: impl Fn(&str) -> bool, limits: WalkLimits) -> Walk {
        let started = Instant::now();
        let mut walk = Walk {
            found: Vec::new(),
            unreadable: Vec::new(),
            complete: true,
        };
        let mut stack = vec![rel.to_path_buf()];
        let mut seen = 0usize;
        while let Some(dir) = stack.pop() {
            if started.elapsed() > limits.time {
                walk.complete = false;
                walk.unreadable.push((
                    shown(&dir),
                    format!(
                        "the walk of the workspace did not finish within {:?}",
                        limits.time
                    ),
                ));
                return walk;
            }
            let entries = match self.list(&dir) {
                Ok(e) => e,
                Err(ConfinedError::NotFound(_)) if dir != rel => continue,
                Err(e) => {
                    walk.unreadable.push((shown(&dir), e.to_string()));
                    continue;
                }
            };
            for (name, kind) in entries {
                seen += 1;
                if seen > limits.entries {
                    walk.complete = false;
                    walk.unreadable.push((
                        shown(&dir),
                        format!("the workspace holds more than {} entries", limits.entries),
                    ));
                    return walk;
                }
                let p = dir.join(&name);
                if kind == Kind::Dir {
                    stack.push(p.clone());
                }
                if wanted(&name) {
                    walk.found.push((p, kind));
                }
            }
        }
        walk.found.sort();
        walk
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    pub entries: usize,
    pub time: Duration,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            entries: 1_000_000,
            time: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Default)]
pub struct Walk {
    /// Matching entries, relative to the root, with their kind.
    pub found: Vec<(PathBuf, Kind)>,
    /// Directories that could not be read, and why.
    pub unreadable: Vec<(String, String)>,
    /// False when a limit stopped the walk early.
    pub complete: bool,
}

/// The client-facing spelling of a normalised relative path.
pub fn display(rel: &Path) -> String {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("nbo-confined-{}", crate::util::random_hex(6)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_parent_dirs_absolute_paths_and_empty_names() {
        for p in [
            "",
            " ",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "\\x",
            ".",
            "a\0b",
        ] {
            assert!(relative(p).is_err(), "{p:?} should be refused");
        }
        assert_eq!(relative("./a/./b").unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn reads_regular_files_inside() {
        let d = tmp();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f.txt"), b"hello").unwrap();
        let root = Root::open(&d).unwrap();
        let (bytes, info) = root.read(Path::new("a/b/f.txt"), 100).unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(info.size, 5);
        assert!(matches!(
            root.read(Path::new("a/b/f.txt"), 4),
            Err(ConfinedError::TooLarge {
                size: 5,
                limit: 4,
                ..
            })
        ));
        assert!(matches!(
            root.read(Path::new("a/nope"), 4),
            Err(ConfinedError::NotFound(_))
        ));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn links_at_any_level_are_refused() {
        let d = tmp();
        let outside = tmp();
        std::fs::write(outside.join("secret"), b"key").unwrap();
        std::fs::create_dir_all(d.join("assets")).unwrap();
        symlink(outside.join("secret"), d.join("assets/leaf")).unwrap();
        symlink(&outside, d.join("dirlink")).unwrap();
        symlink(d.join("assets"), d.join("inside")).unwrap();
        let root = Root::open(&d).unwrap();
        for p in ["assets/leaf", "dirlink/secret", "inside/leaf"] {
            assert!(
                matches!(root.read(Path::new(p), 100), Err(ConfinedError::Symlink(_))),
                "{p}: {:?}",
                root.read(Path::new(p), 100)
            );
        }
        assert!(matches!(
            root.remove_file(Path::new("assets/leaf")),
            Err(ConfinedError::Symlink(_))
        ));
        assert!(outside.join("secret").exists());
        std::fs::remove_dir_all(d).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tmp();
        nix::unistd::mkfifo(&d.join("pipe"), Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let root = Root::open(&d).unwrap();
        assert!(matches!(
            root.read(Path::new("pipe"), 100),
            Err(ConfinedError::NotRegular { kind: Kind::Fifo, .. })
        ));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn walks_every_depth_and_hidden_dirs_but_not_links() {
        let d = tmp();
        let deep: PathBuf = (0..40).map(|i| format!("d{i}")).collect();
        std::fs::create_dir_all(d.join(&deep)).unwrap();
        std::fs::write(d.join(&deep).join("x.ipynb"), b"{}").unwrap();
        std::fs::create_dir_all(d.join(".hidden")).unwrap();
        std::fs::write(d.join(".hidden/y.ipynb"), b"{}").unwrap();
        let outside = tmp();
        std::fs::write(outside.join("z.ipynb"), b"{}").unwrap();
        symlink(&outside, d.join("out")).unwrap();
        symlink(outside.join("z.ipynb"), d.join("link.ipynb")).unwrap();
        let root = Root::open(&d).unwrap();
        let w = root.walk(Path::new(""), |n| n.ends_with(".ipynb"), WalkLimits::default());
        assert!(w.complete);
        let found: Vec<_> = w.found.iter().map(|(p, k)| (display(p), *k)).collect();
        assert!(found.contains(&(display(&deep.join("x.ipynb")), Kind::File)));
        assert!(found.contains(&(".hidden/y.ipynb".to_string(), Kind::File)));
        assert!(found.contains(&("link.ipynb".to_string(), Kind::Symlink)));
        assert!(!found.iter().any(|(p, _)| p.starts_with("out/")));
        let limited = root.walk(
            Path::new(""),
            |_| true,
            WalkLimits {
                entries: 3,
                time: Duration::from_secs(5),
            },
        );
        assert!(!limited.complete && !limited.unreadable.is_empty());
        std::fs::remove_dir_all(d).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }
}
