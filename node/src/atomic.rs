//! Files replaced whole, durably: a crash leaves the old contents or the new ones, never
//! a torn or empty file, and a write that returned is still there after a power loss.

use std::io;
use std::path::Path;

/// Replaces `file` with `bytes`: written to a file of its own beside it (two writers of
/// one file do not share it), synced, renamed over `file`, and the directory synced so
/// that the rename itself is kept.
pub(crate) fn write(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("list.json");
        write(&file, b"first").unwrap();
        write(&file, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["list.json"]);
        // Into a directory that is not there: an error, and nothing made.
        assert!(write(&dir.path().join("missing/list.json"), b"x").is_err());
    }
}
