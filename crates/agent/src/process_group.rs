//! Signals to a job's whole process group.
//!
//! Every shell run starts in a process group of its own (its pid is the group id), so one `kill(-pgid)`
//! reaches the shell, what it started, and what those started in turn, unless a process deliberately
//! left the group (`setsid`). That is how timeouts and cancellation stop a job completely.

/// Sends `signal` to every process in the group. A group that no longer exists is not an error.
pub(crate) fn signal(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // Never let a bogus id turn into kill(0) or kill(-1), which would hit our own group or everyone.
    assert!(pgid > 1, "refusing to signal process group {pgid}");
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, signal, "kill of process group failed: {err}");
        }
    }
}

/// True while any live process is in the group. Zombies do not count: a grandchild orphaned by the kill is
/// reparented to PID 1, and until PID 1 reaps it (some inits do so only now and then, a container without an init
/// never) it would otherwise hold every cancel and timeout for the full kill grace.
pub(crate) fn exists(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    assert!(pgid > 1, "refusing to probe process group {pgid}");
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(-pgid, 0) };
    let any = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    any && live_member(pgid).unwrap_or(true)
}

/// Whether /proc lists a process of the group that is not a zombie; `None` when /proc cannot be read.
fn live_member(pgid: libc::pid_t) -> Option<bool> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<libc::pid_t>().ok());
        if group == Some(pgid) && state != Some("Z") && state != Some("X") {
            return Some(true);
        }
    }
    Some(false)
}

/// Kills the group with SIGKILL when dropped, unless disarmed: if the future running a job is dropped
/// (agent shutdown, a panic elsewhere), the job's processes must not outlive it.
pub(crate) struct KillOnDrop {
    pgid: Option<u32>,
}

impl KillOnDrop {
    pub fn new(pgid: u32) -> KillOnDrop {
        KillOnDrop { pgid: Some(pgid) }
    }

    pub fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            signal(pgid, libc::SIGKILL);
        }
    }
}

/// A readable name for the signals a job is commonly killed by.
pub(crate) fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return None,
    })
}
