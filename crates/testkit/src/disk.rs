//! A small filesystem of a test's own, to run a node out of disk space for real.
//!
//! A tmpfs of a few megabytes is mounted on a directory the test chooses (the suite runs as root, as CI does;
//! without root the test fails saying so) and unmounted when the [`SmallDisk`] is dropped. Unmounting is lazy, so
//! a process still holding files there does not stop the cleanup.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    mount_point: PathBuf,
}

impl SmallDisk {
    /// Mount a tmpfs of `megabytes` on `mount_point` (created if missing; it should be empty).
    pub fn mount(mount_point: &Path, megabytes: u32) -> SmallDisk {
        std::fs::create_dir_all(mount_point).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(mount_point)
            .status()
            .expect("run mount");
        assert!(status.success(), "this test mounts a small tmpfs and needs root (as CI has): mount exited {status}");
        SmallDisk { mount_point: mount_point.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Fill the filesystem to the last byte with one file, whose path is returned (remove it to give the space
    /// back).
    pub fn fill(&self) -> PathBuf {
        let path = self.mount_point.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        while file.write_all(&[0u8; 1]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}

/// Bytes of the files below `dir`, recursively; 0 for a missing directory.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
