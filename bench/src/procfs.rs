//! What Linux says about the server process and the machine: CPU time from `/proc/PID/stat` and `/proc/stat`,
//! resident memory from `/proc/PID/status`.

use std::time::Instant;

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

/// CPU used between [`CpuMeter::start`] and [`CpuMeter::finish`].
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// Cores the server process itself kept busy (utime + stime ÷ wall time).
    pub server_cores: f64,
    /// Cores used by children the server reaped in the interval (shell commands).
    pub children_cores: f64,
    /// Share of the whole machine that was busy (every process, 0..=1).
    pub machine_busy: f64,
}

pub struct CpuMeter {
    pid: u32,
    at: Instant,
    process: ProcessCpu,
    machine: MachineCpu,
}

impl CpuMeter {
    pub fn start(pid: u32) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter { pid, at: Instant::now(), process: process_cpu(pid)?, machine: machine_cpu()? })
    }

    pub fn finish(&self) -> anyhow::Result<CpuUse> {
        let wall_secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let process = process_cpu(self.pid)?;
        let machine = machine_cpu()?;
        let ticks = ticks_per_second();
        let cores = |after: u64, before: u64| after.saturating_sub(before) as f64 / ticks / wall_secs;
        let total = machine.total.saturating_sub(self.machine.total).max(1);
        Ok(CpuUse {
            server_cores: cores(process.own_ticks, self.process.own_ticks),
            children_cores: cores(process.children_ticks, self.process.children_ticks),
            machine_busy: machine.busy.saturating_sub(self.machine.busy) as f64 / total as f64,
        })
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server {:.2} cores · reaped children {:.2} cores · machine {:.0} % busy",
            self.server_cores,
            self.children_cores,
            self.machine_busy * 100.0
        )
    }
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
        assert!(use_.machine_busy >= 0.0 && use_.machine_busy <= 1.0);
    }
}
