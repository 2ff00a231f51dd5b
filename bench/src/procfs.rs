//! What Linux says about the server process and the machine: CPU time from `/proc/PID/stat` and `/proc/stat`,
//! resident memory from `/proc/PID/status`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// CPU time of a process in clock ticks: its own, and that of its children it has already reaped.
#[derive(Debug, Clone, Copy)]
pub struct ProcessCpu {
    pub own_ticks: u64,
    pub children_ticks: u64,
}

pub fn process_cpu(pid: u32) -> anyhow::Result<ProcessCpu> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses; the fields we want follow its last ')'.
    let rest = text.rsplit_once(')').map(|(_, rest)| rest).with_context(|| format!("{path}: no ')' in '{text}'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime, stime, cutime, cstime are fields 14..=17.
    let field = |n: usize| -> anyhow::Result<u64> {
        let text = fields.get(n - 3).with_context(|| format!("{path}: field {n} missing"))?;
        text.parse().with_context(|| format!("{path}: field {n} '{text}' is not a number"))
    };
    Ok(ProcessCpu { own_ticks: field(14)? + field(15)?, children_ticks: field(16)? + field(17)? })
}

/// Resident set size of a process (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:")).with_context(|| format!("{path}: no VmRSS line"))?;
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: VmRSS '{line}' is not a number of kB"))?;
    Ok(kib * 1024)
}

/// How many processes descend from `pid` (children, their children, …), from the parent pid of every process in
/// `/proc`. Processes that end during the scan are simply not counted.
pub fn descendants(pid: u32) -> anyhow::Result<usize> {
    Ok(descendants_each(&[pid])?[0])
}

/// [`descendants`] of each of `pids`, from one scan of `/proc`.
pub fn descendants_each(pids: &[u32]) -> anyhow::Result<Vec<usize>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Field 4 (ppid) is the second after the command name's last ')'.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(child);
        }
    }
    let count = |pid: u32| {
        let mut count = 0;
        let mut stack = vec![pid];
        while let Some(parent) = stack.pop() {
            if let Some(kids) = children.get(&parent) {
                count += kids.len();
                stack.extend(kids);
            }
        }
        count
    };
    Ok(pids.iter().map(|&pid| count(pid)).collect())
}

/// Connections the kernel dropped because a listener's accept queue was full, machine-wide
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`).
pub fn listen_overflows() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        bail!("/proc/net/netstat: expected two TcpExt lines");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .context("/proc/net/netstat: no ListenOverflows counter")
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on every Linux we know).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Busy and total jiffies of the whole machine, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct MachineCpu {
    busy: u64,
    total: u64,
}

fn machine_cpu() -> anyhow::Result<MachineCpu> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().unwrap_or_default();
    let Some(numbers) = line.strip_prefix("cpu ") else {
        bail!("/proc/stat: first line '{line}' is not the cpu total");
    };
    let values: Vec<u64> = numbers.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok(MachineCpu { busy: total - idle, total })
}

/// CPU used between [`CpuMeter::start`] and [`CpuMeter::finish`], in cores (CPU seconds per wall second).
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// The server process itself (utime + stime).
    pub server_cores: f64,
    /// Children the server reaped in the interval (shell commands).
    pub children_cores: f64,
    /// This harness (HTTP sink and clients included).
    pub bench_cores: f64,
    /// Everything else on the machine: other work skews the figures, so the report shows it.
    pub other_cores: f64,
    /// Share of the whole machine that was busy (every process, 0..=1).
    pub machine_busy: f64,
}

pub struct CpuMeter {
    pid: u32,
    at: Instant,
    server: ProcessCpu,
    bench: ProcessCpu,
    machine: MachineCpu,
}

impl CpuMeter {
    pub fn start(pid: u32) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter {
            pid,
            at: Instant::now(),
            server: process_cpu(pid)?,
            bench: process_cpu(std::process::id())?,
            machine: machine_cpu()?,
        })
    }

    pub fn finish(&self) -> anyhow::Result<CpuUse> {
        let wall_secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let server = process_cpu(self.pid)?;
        let bench = process_cpu(std::process::id())?;
        let machine = machine_cpu()?;
        let ticks = ticks_per_second();
        let cores = |after: u64, before: u64| after.saturating_sub(before) as f64 / ticks / wall_secs;
        let server_cores = cores(server.own_ticks, self.server.own_ticks);
        let children_cores = cores(server.children_ticks, self.server.children_ticks);
        let bench_cores = cores(bench.own_ticks, self.bench.own_ticks);
        let machine_cores = cores(machine.busy, self.machine.busy);
        let total = machine.total.saturating_sub(self.machine.total).max(1);
        Ok(CpuUse {
            server_cores,
            children_cores,
            bench_cores,
            other_cores: (machine_cores - server_cores - children_cores - bench_cores).max(0.0),
            machine_busy: machine.busy.saturating_sub(self.machine.busy) as f64 / total as f64,
        })
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server {:.2} cores · its children {:.2} · harness {:.2} · other processes {:.2} (machine {:.0} % busy)",
            self.server_cores,
            self.children_cores,
            self.bench_cores,
            self.other_cores,
            self.machine_busy * 100.0
        )
    }
}

/// CPU of several processes at once (the nodes of a cluster) over an interval, each with the children it reaped.
pub struct ProcessesMeter {
    at: Instant,
    before: Vec<(String, u32, ProcessCpu)>,
    machine: MachineCpu,
}

/// What one process of a [`ProcessesMeter`] used, in cores.
#[derive(Debug, Clone)]
pub struct ProcessUse {
    pub name: String,
    pub own_cores: f64,
    pub children_cores: f64,
}

impl ProcessesMeter {
    pub fn start(processes: &[(String, u32)]) -> anyhow::Result<ProcessesMeter> {
        let before = processes
            .iter()
            .map(|(name, pid)| Ok((name.clone(), *pid, process_cpu(*pid)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ProcessesMeter { at: Instant::now(), before, machine: machine_cpu()? })
    }

    /// Each process's use, and the share of the whole machine that was busy (0..=1).
    pub fn finish(&self) -> anyhow::Result<(Vec<ProcessUse>, f64)> {
        let wall_secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let ticks = ticks_per_second();
        let cores = |after: u64, before: u64| after.saturating_sub(before) as f64 / ticks / wall_secs;
        let mut uses = Vec::with_capacity(self.before.len());
        for (name, pid, before) in &self.before {
            let after = process_cpu(*pid)?;
            uses.push(ProcessUse {
                name: name.clone(),
                own_cores: cores(after.own_ticks, before.own_ticks),
                children_cores: cores(after.children_ticks, before.children_ticks),
            });
        }
        let machine = machine_cpu()?;
        let total = machine.total.saturating_sub(self.machine.total).max(1);
        Ok((uses, machine.busy.saturating_sub(self.machine.busy) as f64 / total as f64))
    }
}

/// Wait (bounded by `budget`) until the machine has been nearly idle (at most `busy_cores_max` cores busy) for
/// three seconds in a row. Answers the busy cores of the last second sampled and whether quiet was reached.
pub async fn wait_for_quiet(budget: Duration, busy_cores_max: f64) -> anyhow::Result<(f64, bool)> {
    let deadline = Instant::now() + budget;
    let mut quiet_seconds = 0;
    let mut busy_cores = 0.0;
    while Instant::now() < deadline {
        let before = machine_cpu()?;
        let at = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = machine_cpu()?;
        let wall_secs = at.elapsed().as_secs_f64();
        busy_cores = after.busy.saturating_sub(before.busy) as f64 / ticks_per_second() / wall_secs;
        quiet_seconds = if busy_cores <= busy_cores_max { quiet_seconds + 1 } else { 0 };
        if quiet_seconds >= 3 {
            return Ok((busy_cores, true));
        }
    }
    Ok((busy_cores, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        process_cpu(pid).unwrap();
        let meter = CpuMeter::start(pid).unwrap();
        let use_ = meter.finish().unwrap();
        listen_overflows().unwrap();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(descendants(pid).unwrap() >= 1);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(use_.machine_busy >= 0.0 && use_.machine_busy <= 1.0);
    }
}
