//! The filesystem: a flat directory of regular files, each backed by the
//! file of the same name in the backing directory. Node ids are the backing
//! files' inode numbers (the root is 1), so the fuse inode's st_ino is the
//! backing file's. Open handles are indices into a table of backing fds.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::proto::{self, *};

/// How long the kernel may cache names and attributes, in seconds.
const VALID_S: u64 = 1;

/// A reply: an errno, or the bytes after the out header.
pub type Reply = Result<Vec<u8>, i32>;

pub struct Fs {
    backing: PathBuf,
    /// Node id → (file name, lookup count).
    nodes: HashMap<u64, (String, u64)>,
    /// fh → backing file.
    handles: HashMap<u64, File>,
    next_fh: u64,
}

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn check(r: libc::c_int) -> Result<(), i32> {
    if r < 0 {
        Err(errno(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn cpath(p: &std::path::Path) -> Result<CString, i32> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)
}

fn attr_of(st: &libc::stat, ino: u64) -> Attr {
    Attr {
        ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn entry(attr: Attr) -> EntryOut {
    EntryOut {
        nodeid: attr.ino,
        entry_valid: VALID_S,
        attr_valid: VALID_S,
        attr,
        ..Default::default()
    }
}

fn attr_out(attr: Attr) -> Vec<u8> {
    AttrOut {
        attr_valid: VALID_S,
        attr,
        ..Default::default()
    }
    .bytes()
    .to_vec()
}

fn bad() -> i32 {
    libc::EINVAL
}

impl Fs {
    pub fn new(backing: PathBuf) -> Fs {
        Fs {
            backing,
            nodes: HashMap::new(),
            handles: HashMap::new(),
            next_fh: 1,
        }
    }

    fn path_of(&self, nodeid: u64) -> Result<PathBuf, i32> {
        let (name, _) = self.nodes.get(&nodeid).ok_or(libc::ESTALE)?;
        Ok(self.backing.join(name))
    }

    fn stat_path(p: &std::path::Path) -> Result<libc::stat, i32> {
        let c = cpath(p)?;
        // SAFETY: zeroed stat is a valid out buffer; c is NUL-terminated.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
        Ok(st)
    }

    fn stat_fd(f: &File) -> Result<libc::stat, i32> {
        // SAFETY: as above, on an open fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstat(f.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    fn getattr_node(&self, nodeid: u64, fh: Option<u64>) -> Result<Attr, i32> {
        if nodeid == ROOT_ID {
            return Ok(attr_of(&Self::stat_path(&self.backing)?, ROOT_ID));
        }
        let st = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some(f) => Self::stat_fd(f)?,
            None => Self::stat_path(&self.path_of(nodeid)?)?,
        };
        Ok(attr_of(&st, nodeid))
    }

    /// A name in the root, counted as one more lookup of its node.
    fn remember(&mut self, parent: u64, name: &str) -> Result<Attr, i32> {
        if parent != ROOT_ID {
            return Err(libc::ENOENT);
        }
        if name.contains('/') || name == "." || name == ".." {
            return Err(libc::EINVAL);
        }
        let st = Self::stat_path(&self.backing.join(name))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            // A flat directory of regular files: nothing else is shown.
            return Err(libc::ENOENT);
        }
        let node = self
            .nodes
            .entry(st.st_ino)
            .or_insert_with(|| (name.to_string(), 0));
        node.0 = name.to_string();
        node.1 += 1;
        Ok(attr_of(&st, st.st_ino))
    }

    fn forget(&mut self, nodeid: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&nodeid) {
            node.1 = node.1.saturating_sub(n);
            if node.1 == 0 {
                self.nodes.remove(&nodeid);
            }
        }
    }

    fn open_backing(&mut self, path: &std::path::Path, flags: u32, mode: u32) -> Result<u64, i32> {
        // Always read-write and never append: the kernel reads pages
        // through any handle and gives every write its offset.
        let keep = flags as i32 & !(libc::O_ACCMODE | libc::O_APPEND | libc::O_DIRECT);
        let c = cpath(path)?;
        // SAFETY: c is NUL-terminated; the fd is owned by the File.
        let fd = unsafe { libc::open(c.as_ptr(), keep | libc::O_RDWR | libc::O_CLOEXEC, mode) };
        check(fd)?;
        let f = unsafe { File::from_raw_fd(fd) };
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, f);
        Ok(fh)
    }

    fn handle(&self, fh: u64) -> Result<&File, i32> {
        self.handles.get(&fh).ok_or(libc::EBADF)
    }

    /// Serves one request; None: no reply (FORGET, BATCH_FORGET, INTERRUPT).
    pub fn dispatch(&mut self, h: &InHeader, body: &[u8]) -> Option<Reply> {
        Some(match h.opcode {
            proto::FORGET => {
                if let Some((f, _)) = take::<ForgetIn>(body) {
                    self.forget(h.nodeid, f.nlookup);
                }
                return None;
            }
            proto::BATCH_FORGET => {
                if let Some((b, mut rest)) = take::<BatchForgetIn>(body) {
                    for _ in 0..b.count {
                        let Some((one, r)) = take::<ForgetOne>(rest) else {
                            break;
                        };
                        self.forget(one.nodeid, one.nlookup);
                        rest = r;
                    }
                }
                return None;
            }
            // An interrupted request finishes anyway: nothing to cancel.
            proto::INTERRUPT => return None,
            proto::DESTROY => Ok(Vec::new()),
            proto::LOOKUP => self.lookup(h, body),
            proto::GETATTR => self.getattr(h, body),
            proto::SETATTR => self.setattr(h, body),
            proto::MKNOD => self.mknod(h, body),
            proto::CREATE => self.create(h, body),
            proto::OPEN => self.open(h, body),
            proto::READ => self.read(body),
            proto::WRITE => self.write(body),
            proto::FLUSH => Ok(Vec::new()),
            proto::RELEASE => self.release(body),
            proto::FSYNC => self.fsync(body),
            proto::FALLOCATE => self.fallocate(body),
            proto::UNLINK => self.unlink(h, body),
            proto::STATFS => self.statfs(),
            _ => Err(libc::ENOSYS),
        })
    }

    fn lookup(&mut self, h: &InHeader, body: &[u8]) -> Reply {
        let name = proto::name(body).ok_or_else(bad)?;
        Ok(entry(self.remember(h.nodeid, name)?).bytes().to_vec())
    }

    fn getattr(&mut self, h: &InHeader, body: &[u8]) -> Reply {
        let fh = take::<GetattrIn>(body)
            .filter(|(g, _)| g.getattr_flags & GETATTR_FH != 0)
            .map(|(g, _)| g.fh);
        Ok(attr_out(self.getattr_node(h.nodeid, fh)?))
    }

    fn setattr(&mut self, h: &InHeader, body: &[u8]) -> Reply {
        let (s, _) = take::<SetattrIn>(body).ok_or_else(bad)?;
        if h.nodeid == ROOT_ID {
            return Err(libc::EPERM);
        }
        let path = self.path_of(h.nodeid)?;
        if s.valid & FATTR_SIZE != 0 {
            match s.valid & FATTR_FH != 0 {
                true => self.handle(s.fh)?.set_len(s.size).map_err(errno)?,
                false => File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(s.size))
                    .map_err(errno)?,
            }
        }
        if s.valid & FATTR_MODE != 0 {
            let c = cpath(&path)?;
            // SAFETY: c is NUL-terminated.
            check(unsafe { libc::chmod(c.as_ptr(), s.mode & 0o7777) })?;
        }
        // Times, owners: accepted and not kept (nothing here depends on them).
        Ok(attr_out(self.getattr_node(h.nodeid, None)?))
    }

    fn mknod(&mut self, h: &InHeader, body: &[u8]) -> Reply {
        let (m, rest) = take::<MknodIn>(body).ok_or_else(bad)?;
        if m.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(libc::EPERM);
        }
        let name = proto::name(rest).ok_or_else(bad)?;
        if h.nodeid != ROOT_ID {
            return Err(libc::ENOENT);
        }
        let c = cpath(&self.backing.join(name))?;
        // SAFETY: c is NUL-terminated.
        check(unsafe { libc::mknod(c.as_ptr(), m.mode & !m.umask, 0) })?;
        Ok(entry(self.remember(h.nodeid, name)?).bytes().to_vec())
    }

    fn create(&mut self, h: &InHeader, body: &[u8]) -> Reply {
        let (c, rest) = take::<CreateIn>(body).ok_or_else(bad)?;
        let name = proto::name(rest).ok_or_else(bad)?;
        if h.nodeid != ROOT_ID {
            return Err(libc::ENOENT);
        }
        let fh = self.open_backing(
            &self.backing.join(name),
            c.flags | libc::O_CREAT as u32,
            c.mode & !c.umask,
        )?;
        let attr = match self.remember(h.nodeid, name) {
            Ok(a) => a,
            Err(e) => {
                self.handles.remove(&fh);
                return Err(e);
            }
        };
        let mut out = entry(attr).bytes().to_vec();
        out.extend_from_slice(
            OpenOut {
                fh,
                ..Default::default()
            }
            .bytes(),
        );
        Ok(out)
    }

    fn open(&mut self, h: &InHeader, body: &[u8]) -> Reply {
        let (o, _) = take::<OpenIn>(body).ok_or_else(bad)?;
        if h.nodeid == ROOT_ID {
            return Err(libc::EISDIR);
        }
        let path = self.path_of(h.nodeid)?;
        let flags = o.flags & !(libc::O_CREAT | libc::O_EXCL) as u32;
        // open_flags 0: no FOPEN_DIRECT_IO, so reads and shared mappings go
        // through the page cache; no FOPEN_KEEP_CACHE, so an open drops it.
        let fh = self.open_backing(&path, flags, 0)?;
        Ok(OpenOut {
            fh,
            ..Default::default()
        }
        .bytes()
        .to_vec())
    }

    fn read(&mut self, body: &[u8]) -> Reply {
        let (r, _) = take::<ReadIn>(body).ok_or_else(bad)?;
        let f = self.handle(r.fh)?;
        let mut buf = vec![0u8; r.size as usize];
        let mut done = 0;
        while done < buf.len() {
            match std::os::unix::fs::FileExt::read_at(f, &mut buf[done..], r.offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn write(&mut self, body: &[u8]) -> Reply {
        let (w, data) = take::<WriteIn>(body).ok_or_else(bad)?;
        let data = data.get(..w.size as usize).ok_or_else(bad)?;
        let f = self.handle(w.fh)?;
        std::os::unix::fs::FileExt::write_all_at(f, data, w.offset).map_err(errno)?;
        Ok(WriteOut {
            size: w.size,
            padding: 0,
        }
        .bytes()
        .to_vec())
    }

    fn release(&mut self, body: &[u8]) -> Reply {
        let (r, _) = take::<ReleaseIn>(body).ok_or_else(bad)?;
        self.handles.remove(&r.fh);
        Ok(Vec::new())
    }

    fn fsync(&mut self, body: &[u8]) -> Reply {
        let (s, _) = take::<FsyncIn>(body).ok_or_else(bad)?;
        let f = self.handle(s.fh)?;
        // fsync_flags bit 0: datasync.
        match s.fsync_flags & 1 {
            0 => f.sync_all(),
            _ => f.sync_data(),
        }
        .map_err(errno)?;
        Ok(Vec::new())
    }

    fn fallocate(&mut self, body: &[u8]) -> Reply {
        let (a, _) = take::<FallocateIn>(body).ok_or_else(bad)?;
        let f = self.handle(a.fh)?;
        // The mode as the kernel sent it: the backing filesystem frees
        // (punch), zeroes or allocates the blocks, or refuses.
        // SAFETY: fallocate on an open fd.
        check(unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                a.mode as i32,
                a.offset as i64,
                a.length as i64,
            )
        })?;
        Ok(Vec::new())
    }

    fn unlink(&mut self, h: &InHeader, body: &[u8]) -> Reply {
        let name = proto::name(body).ok_or_else(bad)?;
        if h.nodeid != ROOT_ID {
            return Err(libc::ENOENT);
        }
        std::fs::remove_file(self.backing.join(name)).map_err(errno)?;
        Ok(Vec::new())
    }

    fn statfs(&mut self) -> Reply {
        let c = cpath(&self.backing)?;
        // SAFETY: zeroed statvfs is a valid out buffer.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::statvfs(c.as_ptr(), &mut s) })?;
        Ok(StatfsOut {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
            ..Default::default()
        }
        .bytes()
        .to_vec())
    }
}
