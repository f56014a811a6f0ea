//! Names for (dev, ino) pairs, found in the faulting process's own mappings:
//! the file is mapped there, so /proc/PID/maps names it without a filesystem
//! walk.

use std::collections::HashMap;

use crate::event::FileId;

#[derive(Default)]
pub struct PathCache {
    known: HashMap<FileId, Option<String>>,
}

impl PathCache {
    pub fn resolve(&mut self, file: FileId, pid: u32) -> Option<&str> {
        if !matches!(self.known.get(&file), Some(Some(_))) {
            let found = from_maps(file, pid);
            self.known.insert(file, found);
        }
        self.known.get(&file).and_then(|p| p.as_deref())
    }
}

fn from_maps(file: FileId, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    parse_maps(&text, file)
}

/// Finds `file` in maps text ("addr perms off MAJ:MIN ino path", hex dev).
pub fn parse_maps(text: &str, file: FileId) -> Option<String> {
    let want_dev = format!("{:02x}:{:02x}", file.major(), file.minor());
    let want_ino = file.ino.to_string();
    text.lines().find_map(|line| {
        // Five space-separated fields, then padding, then the path verbatim
        // (it may itself contain spaces).
        let mut rest = line;
        let mut fields = [""; 5];
        for f in &mut fields {
            rest = rest.trim_start();
            let end = rest.find(' ')?;
            *f = &rest[..end];
            rest = &rest[end..];
        }
        let path = rest.trim_start();
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        (fields[3] == want_dev && fields[4] == want_ino && !path.is_empty())
            .then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mapped_file() {
        let maps = "7f00-7f10 r--s 00000000 07:01 131 /mnt/xfs/racer.dat\n\
                    7f20-7f30 r-xp 00000000 fe:00 99 /usr/bin/racer\n";
        let file = FileId {
            dev: (7 << 20) | 1,
            ino: 131,
        };
        assert_eq!(
            parse_maps(maps, file).as_deref(),
            Some("/mnt/xfs/racer.dat")
        );
        let spaced = "7f00-7f10 r--s 00000000 07:01 131        /mnt/a  b.dat (deleted)\n";
        assert_eq!(parse_maps(spaced, file).as_deref(), Some("/mnt/a  b.dat"));
        let other = FileId {
            dev: (7 << 20) | 2,
            ino: 131,
        };
        assert_eq!(parse_maps(maps, other), None);
    }
}
