//! The FUSE wire format: the structs of the kernel's
//! include/uapi/linux/fuse.h (protocol 7.38) this server uses, and a
//! request's bytes taken apart.

/// Protocol version we speak (fuse.h FUSE_KERNEL_VERSION / MINOR).
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR: u32 = 38;

/// Root directory's node id (FUSE_ROOT_ID).
pub const ROOT_ID: u64 = 1;

// enum fuse_opcode
pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const MKNOD: u32 = 8;
pub const UNLINK: u32 = 10;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const FLUSH: u32 = 25;
pub const INIT: u32 = 26;
pub const CREATE: u32 = 35;
pub const INTERRUPT: u32 = 36;
pub const DESTROY: u32 = 38;
pub const BATCH_FORGET: u32 = 42;
pub const FALLOCATE: u32 = 43;

// fuse_init flags
pub const ASYNC_READ: u32 = 1 << 0;
pub const BIG_WRITES: u32 = 1 << 5;

// fuse_setattr_in.valid
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_FH: u32 = 1 << 6;

// fuse_getattr_in.getattr_flags
pub const GETATTR_FH: u32 = 1 << 0;

/// Largest WRITE payload we accept (the kernel's default max_pages, 32).
pub const MAX_WRITE: u32 = 128 * 1024;
/// Read buffer: one WRITE request with its headers fits (the kernel
/// wants at least FUSE_MIN_READ_BUFFER, 8192).
pub const BUFFER_SIZE: usize = MAX_WRITE as usize + 4096;

/// Plain old data: any bytes of the right length are a value.
///
/// # Safety
/// Only for `#[repr(C)]` structs of integers without padding holes.
pub unsafe trait Pod: Copy + Default {
    fn bytes(&self) -> &[u8] {
        // SAFETY: Pod types are repr(C) integers without padding.
        unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, size_of::<Self>()) }
    }
}

/// A `T` from the front of `buf`, and the rest; None when `buf` is short.
pub fn take<T: Pod>(buf: &[u8]) -> Option<(T, &[u8])> {
    if buf.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; Pod allows any bit pattern; read_unaligned
    // needs no alignment.
    let v = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) };
    Some((v, &buf[size_of::<T>()..]))
}

/// A NUL-terminated name at the front of `buf`.
pub fn name(buf: &[u8]) -> Option<&str> {
    let end = buf.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&buf[..end]).ok()
}

macro_rules! pod {
    ($($(#[$m:meta])* pub struct $name:ident { $(pub $f:ident: $t:ty,)* })*) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name { $(pub $f: $t,)* }
        // SAFETY: repr(C), integer fields laid out without holes (checked
        // against fuse.h's sizes in the tests below).
        unsafe impl Pod for $name {}
    )*};
}

pod! {
    pub struct InHeader {
        pub len: u32, pub opcode: u32, pub unique: u64, pub nodeid: u64,
        pub uid: u32, pub gid: u32, pub pid: u32, pub total_extlen: u16, pub padding: u16,
    }
    pub struct OutHeader { pub len: u32, pub error: i32, pub unique: u64, }
    pub struct InitIn {
        pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32,
    }
    pub struct InitOut {
        pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32,
        pub max_background: u16, pub congestion_threshold: u16, pub max_write: u32,
        pub time_gran: u32, pub max_pages: u16, pub map_alignment: u16, pub flags2: u32,
        pub unused: [u32; 7],
    }
    pub struct Attr {
        pub ino: u64, pub size: u64, pub blocks: u64,
        pub atime: u64, pub mtime: u64, pub ctime: u64,
        pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32,
        pub mode: u32, pub nlink: u32, pub uid: u32, pub gid: u32, pub rdev: u32,
        pub blksize: u32, pub flags: u32,
    }
    pub struct EntryOut {
        pub nodeid: u64, pub generation: u64, pub entry_valid: u64, pub attr_valid: u64,
        pub entry_valid_nsec: u32, pub attr_valid_nsec: u32, pub attr: Attr,
    }
    pub struct AttrOut { pub attr_valid: u64, pub attr_valid_nsec: u32, pub dummy: u32, pub attr: Attr, }
    pub struct ForgetIn { pub nlookup: u64, }
    pub struct BatchForgetIn { pub count: u32, pub dummy: u32, }
    pub struct ForgetOne { pub nodeid: u64, pub nlookup: u64, }
    pub struct GetattrIn { pub getattr_flags: u32, pub dummy: u32, pub fh: u64, }
    pub struct SetattrIn {
        pub valid: u32, pub padding: u32, pub fh: u64, pub size: u64, pub lock_owner: u64,
        pub atime: u64, pub mtime: u64, pub ctime: u64,
        pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32, pub mode: u32,
        pub unused4: u32, pub uid: u32, pub gid: u32, pub unused5: u32,
    }
    pub struct MknodIn { pub mode: u32, pub rdev: u32, pub umask: u32, pub padding: u32, }
    pub struct OpenIn { pub flags: u32, pub open_flags: u32, }
    pub struct CreateIn { pub flags: u32, pub mode: u32, pub umask: u32, pub open_flags: u32, }
    pub struct OpenOut { pub fh: u64, pub open_flags: u32, pub padding: u32, }
    pub struct ReleaseIn { pub fh: u64, pub flags: u32, pub release_flags: u32, pub lock_owner: u64, }
    pub struct ReadIn {
        pub fh: u64, pub offset: u64, pub size: u32, pub read_flags: u32,
        pub lock_owner: u64, pub flags: u32, pub padding: u32,
    }
    pub struct WriteIn {
        pub fh: u64, pub offset: u64, pub size: u32, pub write_flags: u32,
        pub lock_owner: u64, pub flags: u32, pub padding: u32,
    }
    pub struct WriteOut { pub size: u32, pub padding: u32, }
    pub struct FsyncIn { pub fh: u64, pub fsync_flags: u32, pub padding: u32, }
    pub struct FallocateIn { pub fh: u64, pub offset: u64, pub length: u64, pub mode: u32, pub padding: u32, }
    pub struct StatfsOut {
        pub blocks: u64, pub bfree: u64, pub bavail: u64, pub files: u64, pub ffree: u64,
        pub bsize: u32, pub namelen: u32, pub frsize: u32, pub padding: u32, pub spare: [u32; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes fuse.h gives (FUSE_COMPAT_* and the full structs).
    #[test]
    fn sizes_match_fuse_h() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<StatfsOut>(), 80);
        assert_eq!(size_of::<FallocateIn>(), 32);
        assert_eq!(size_of::<ReleaseIn>(), 24);
    }

    #[test]
    fn take_and_name() {
        let mut buf = ForgetIn { nlookup: 7 }.bytes().to_vec();
        buf.extend_from_slice(b"racer.dat\0junk");
        let (f, rest) = take::<ForgetIn>(&buf).unwrap();
        assert_eq!(f.nlookup, 7);
        assert_eq!(name(rest), Some("racer.dat"));
        assert!(take::<ReadIn>(&buf[..4]).is_none());
    }
}
