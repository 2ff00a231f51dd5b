//! A memory cgroup of the test's own, with a limit: processes moved into it share that limit, as a node and
//! its runs do under a systemd unit or in a container. Root only; cgroup v1 (`/sys/fs/cgroup/memory`) or
//! v2 (`/sys/fs/cgroup`), created below the test's own memory cgroup and removed when dropped (whatever is
//! still inside is moved back to the parent first).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which cgroup interface the group uses: the file names differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

pub struct MemoryCgroup {
    dir: PathBuf,
    version: Version,
}

impl MemoryCgroup {
    /// A new group below the caller's memory cgroup, limited to `limit_bytes` (swap included, where the
    /// kernel counts it). Panics naming what failed: a test that needs the limit cannot go on without it.
    pub fn create(limit_bytes: u64) -> MemoryCgroup {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let (parent, version) = parent_group(&own).unwrap_or_else(|| {
            panic!("no writable memory cgroup (v1 /sys/fs/cgroup/memory or v2 /sys/fs/cgroup) for this process: {own}")
        });
        let name = format!("kairos-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create the memory cgroup {}: {e}", dir.display()));
        let group = MemoryCgroup { dir, version };
        let limit = limit_bytes.to_string();
        match version {
            Version::V1 => {
                group.write("memory.limit_in_bytes", &limit);
                // Without swap accounting the file is absent; with it, swap must not stretch the limit.
                if group.dir.join("memory.memsw.limit_in_bytes").exists() {
                    group.write("memory.memsw.limit_in_bytes", &limit);
                }
            }
            Version::V2 => {
                group.write("memory.max", &limit);
                if group.dir.join("memory.swap.max").exists() {
                    group.write("memory.swap.max", "0");
                }
            }
        }
        group
    }

    /// Moves a process (all its threads) into the group; its children from then on are born inside.
    pub fn add(&self, pid: i32) {
        self.write("cgroup.procs", &pid.to_string());
    }

    /// How many processes of the group the kernel's out-of-memory killer has killed.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let Some(parent) = self.dir.parent() else { return };
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(parent.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The directory of this process's memory cgroup, where a child group with a memory limit can be made.
fn parent_group(proc_self_cgroup: &str) -> Option<(PathBuf, Version)> {
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(path);
            if dir.join("memory.limit_in_bytes").exists() {
                return Some((dir, Version::V1));
            }
        }
    }
    let path = proc_self_cgroup.lines().find_map(|line| line.strip_prefix("0::"))?.trim_start_matches('/');
    let dir = Path::new("/sys/fs/cgroup").join(path);
    // Children get the memory controller only if the parent hands it down.
    let controllers = std::fs::read_to_string(dir.join("cgroup.subtree_control")).ok()?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory").ok()?;
    }
    Some((dir, Version::V2))
}
