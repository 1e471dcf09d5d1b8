//! Depth-first walks of an upper directory, for trees nested deeper than a
//! thread's stack or `PATH_MAX` allows.
//!
//! Remounting (`load`), `docker diff` (`changes`), the commit's read-back
//! (`layer`) and emptying a directory (`upper`) walk trees a container made,
//! and a container may nest directories as deep as it likes: kernel
//! overlayfs copies up below a lower tree 20,000 levels deep, whose upper
//! paths are far longer than the 4,096 bytes a path given to the kernel may
//! have. So a walk here is a loop with a stack of its own (no recursion),
//! opens each directory relative to its parent (never by a path from the
//! upper root) and holds one directory fd at a time (not one per level, which
//! a deep tree would run out of): it comes back up through `..`, checked
//! against the device and inode number it left, so that a directory moved
//! meanwhile ends the walk with an error instead of reading somewhere else.
//!
//! The upper directory of a running container changes while `docker diff`
//! reads it: a subdirectory listed but gone (or no longer a directory) by the
//! time it is opened is passed over, as it is no longer there to report;
//! a moved one ends the walk with [`Moved`] for the caller to start again.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

use crate::upper::errno;

/// One step of a directory's part of a walk, in the order they are taken.
pub(crate) enum Visit<O, C> {
    /// Handed to the walk's `emit`, with the directory's fd.
    Emit(O),
    /// Walk the subdirectory of this name here; `C` is what `enter` gets
    /// for it.
    Descend(Vec<u8>, C),
}

/// Walks the tree below `root` (a readable directory fd): `enter` gets each
/// directory's fd and context and says what to do in it, in order; `emit`
/// takes the items `enter` left for later (with the fd of the directory
/// whose `enter` made them), so that a directory's entries and its
/// subdirectories' walks interleave as a recursive walk's would.
pub(crate) fn walk<O, C>(
    root: OwnedFd,
    root_ctx: C,
    mut enter: impl FnMut(BorrowedFd<'_>, C) -> io::Result<Vec<Visit<O, C>>>,
    mut emit: impl FnMut(BorrowedFd<'_>, O) -> io::Result<()>,
) -> io::Result<()> {
    struct Frame<O, C> {
        id: (u64, u64),
        todo: std::vec::IntoIter<Visit<O, C>>,
    }
    let items = enter(root.as_fd(), root_ctx)?;
    let mut stack = vec![Frame { id: id_of(root.as_fd())?, todo: items.into_iter() }];
    let mut cur = root;
    while let Some(top) = stack.last_mut() {
        match top.todo.next() {
            Some(Visit::Emit(o)) => emit(cur.as_fd(), o)?,
            Some(Visit::Descend(name, ctx)) => {
                let child = match open_subdir(cur.as_fd(), &name) {
                    Err(e) if vanished(&e) => continue,
                    r => r?,
                };
                let items = enter(child.as_fd(), ctx)?;
                // A directory with nothing left to do is not gone into.
                if !items.is_empty() {
                    stack.push(Frame { id: id_of(child.as_fd())?, todo: items.into_iter() });
                    cur = child;
                }
            }
            None => {
                stack.pop();
                if let Some(parent) = stack.last() {
                    let up = rustix::fs::openat(
                        &cur,
                        "..",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(errno)?;
                    if id_of(up.as_fd())? != parent.id {
                        return Err(io::Error::other(Moved));
                    }
                    cur = up;
                }
            }
        }
    }
    Ok(())
}

/// Why a walk ended: a directory it was in was moved meanwhile, so that
/// going back up through `..` would have read somewhere else.
#[derive(Debug, thiserror::Error)]
#[error("a directory was moved while the upper directory was read; try again")]
pub(crate) struct Moved;

/// Whether a walk ended because a directory it was in was moved.
pub(crate) fn was_moved(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Moved>())
}

/// Whether `e` says that an entry listed a moment ago is no longer there
/// as it was: removed, or replaced by a file or a symlink.
pub(crate) fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP))
}

/// Opens the subdirectory `name` of `dir` readable, refusing a symlink.
pub(crate) fn open_subdir(dir: BorrowedFd, name: &[u8]) -> io::Result<OwnedFd> {
    crate::upper::open_beneath_of(dir, name, OFlags::RDONLY | OFlags::DIRECTORY)
}

fn id_of(fd: BorrowedFd) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd).map_err(errno)?;
    Ok((st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_names(root: &std::path::Path, mut meanwhile: impl FnMut(&[u8])) -> io::Result<Vec<Vec<u8>>> {
        let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).map_err(errno)?;
        let mut seen = Vec::new();
        walk(
            fd,
            Vec::new(),
            |fd, rel: Vec<u8>| {
                meanwhile(&rel);
                let mut names = crate::upper::list_dir(fd)?;
                names.sort();
                let mut todo = Vec::new();
                for n in names {
                    let path = if rel.is_empty() { n.clone() } else { [&rel[..], b"/", &n].concat() };
                    todo.push(Visit::Emit(path.clone()));
                    todo.push(Visit::Descend(n, path));
                }
                Ok(todo)
            },
            |_, p| {
                seen.push(p);
                Ok(())
            },
        )?;
        Ok(seen)
    }

    #[test]
    fn walks_depth_first_and_stops_where_a_directory_moved() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["a/b/c", "a/e", "f"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let seen = walk_names(root, |_| {}).unwrap();
        let want: Vec<&[u8]> = vec![b"a", b"a/b", b"a/b/c", b"a/e", b"f"];
        assert_eq!(seen, want);

        // "a/b" moves to the top while its child is walked: going back up
        // through ".." would reach the top, not "a", and list it as "a".
        let moved = walk_names(root, |rel| {
            if rel == b"a/b/c" {
                std::fs::rename(root.join("a/b"), root.join("b2")).unwrap();
            }
        });
        assert!(moved.is_err(), "{moved:?}");
    }
}
