//! A network of a test's own, to cut nodes off for real: each host is a Linux network namespace with one address,
//! joined to the others by a bridge, and the test (in the machine's own namespace) reaches every host as the
//! observer at `.254`.
//!
//! ```text
//!   host 0 (10.N.M.1)   host 1 (10.N.M.2)   …        test process (10.N.M.254)
//!        │ veth              │ veth                       │ veth
//!        └──────────── bridge, in a "switch" namespace ───┘
//! ```
//!
//! [`Network::cut`] drops a host's packets to and/or from the other hosts with an nftables rule inside the host's
//! namespace (Debian's `nftables`); traffic with the observer still flows, so the test can ask a cut-off node what
//! it thinks. [`Network::heal`] removes the rules. Dropping the [`Network`] deletes its namespaces, which deletes
//! every interface and rule with them; namespaces left by a test process that died are removed by the next one.
//! Needs root (CI runs as root) and `ip` (iproute2) and `nft`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace this kit creates: `kt-<pid>-<n>-…`.
const PREFIX: &str = "kt-";

/// Which packets a cut drops, seen from the cut host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing in or out (a cable pulled).
    Both,
    /// It receives but cannot send.
    Outgoing,
    /// It sends but receives nothing.
    Incoming,
    /// It answers but cannot call: what it sends on connections (and datagram flows) it opened to the other hosts
    /// is dropped, whether it opens them now or had them open already (pooled); its replies on those the others
    /// open to it pass (a node that serves RPC but whose own calls fail).
    Calls,
}

pub struct Network {
    /// `kt-<pid>-<n>`: the switch namespace is `<id>-sw`, host i's `<id>-<i>`.
    id: String,
    subnet: [u8; 3],
    hosts: usize,
}

impl Network {
    /// A network of `hosts` hosts. Panics naming the command that failed (e.g. without root).
    pub fn create(hosts: usize) -> Network {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        assert!((1..=250).contains(&hosts), "1 to 250 hosts");
        remove_leftovers();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Unique per process and network, in 10.200.0.0/13 (rarely used on a build machine).
        let subnet = [10, 200 + (pid % 8) as u8, (n % 256) as u8];
        let network = Network { id: format!("{PREFIX}{pid}-{n}"), subnet, hosts };
        network.build();
        network
    }

    fn build(&self) {
        let sw = self.switch_ns();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..self.hosts {
            let ns = self.ns(i);
            let (inner, outer) = (format!("h{i}"), format!("p{i}"));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "link", "add", &inner, "type", "veth", "peer", "name", &outer, "netns", &sw]);
            ip(&["-n", &sw, "link", "set", &outer, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.ip(i)), "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            // Connection tracking from the first packet on: a `Calls` cut tells the connections a host opened from
            // those opened to it by their direction, which conntrack only gets right for flows it saw start (a flow
            // it first meets mid-stream, e.g. a reply arriving just after the cut, is taken the wrong way round).
            run_with_input(
                &["ip", "netns", "exec", &ns, "nft", "-f", "-"],
                "table inet track {\n  chain out { type filter hook output priority -10; policy accept; ct state new accept; }\n}\n",
            );
        }
        // The observer: a veth from the machine's namespace into the switch. Its name must be unique on the
        // machine (interface names: 15 bytes at most); it disappears with the switch namespace.
        let outer = self.observer_link();
        ip(&["-n", &sw, "link", "add", "obs", "type", "veth", "peer", "name", &outer, "netns", "1"]);
        ip(&["-n", &sw, "link", "set", "obs", "master", "br0", "up"]);
        ip(&["addr", "add", &format!("{}/24", self.observer_ip()), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
    }

    fn switch_ns(&self) -> String {
        format!("{}-sw", self.id)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.id)
    }

    fn observer_link(&self) -> String {
        format!("ko{}x{}", self.subnet[1], self.subnet[2])
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Host `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.{}", i + 1)
    }

    /// The test process's address on this network.
    pub fn observer_ip(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.254")
    }

    /// A command that runs `program` inside host `i` (the process itself, not a child: `ip netns exec` execs it,
    /// so its pid can be signalled).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(i)]).arg(program);
        command
    }

    /// Cut host `i` off from the other hosts (not from the observer), as `cut` says. Replaces an earlier cut.
    pub fn cut(&self, i: usize, cut: Cut) {
        self.heal(i);
        let observer = self.observer_ip();
        let mut rules = String::from("table inet cut {\n");
        if matches!(cut, Cut::Both | Cut::Outgoing) {
            rules += &format!(
                "  chain out {{ type filter hook output priority 0; policy accept; ip daddr != {observer} drop; }}\n"
            );
        }
        if matches!(cut, Cut::Calls) {
            rules += &format!(
                "  chain out {{ type filter hook output priority 0; policy accept; ip daddr != {observer} ct direction original drop; }}\n"
            );
        }
        if matches!(cut, Cut::Both | Cut::Incoming) {
            rules += &format!(
                "  chain in {{ type filter hook input priority 0; policy accept; ip saddr != {observer} iifname != \"lo\" drop; }}\n"
            );
        }
        rules += "}\n";
        run_with_input(&["ip", "netns", "exec", &self.ns(i), "nft", "-f", "-"], &rules);
    }

    /// Remove host `i`'s cut, if any.
    pub fn heal(&self, i: usize) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "nft", "delete", "table", "inet", "cut"])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.switch_ns()]).status();
    }
}

/// Delete the namespaces of test processes that are gone (killed before they could clean up).
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

#[track_caller]
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {} (this test builds network namespaces and needs root, as CI has)",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

#[track_caller]
fn run_with_input(args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e} (Debian's nftables provides nft)", args[0]));
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write rules");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a TCP connection attempt from host `from` reaches host `to`: nothing listens on the port, so a
    /// host that gets the packet refuses at once (exit 1), and a cut one leaves it unanswered (timeout: 124).
    fn reaches(net: &Network, from: usize, to: usize) -> bool {
        let status = net
            .command(from, Path::new("timeout"))
            .args(["2", "bash", "-c", &format!("exec 3<>/dev/tcp/{}/9", net.ip(to))])
            .stderr(Stdio::null())
            .status()
            .expect("connect");
        status.code() != Some(124)
    }

    #[test]
    fn hosts_reach_each_other_until_cut() {
        let net = Network::create(2);
        assert!(reaches(&net, 0, 1));
        net.cut(1, Cut::Both);
        assert!(!reaches(&net, 0, 1));
        net.heal(1);
        assert!(reaches(&net, 0, 1));
        net.cut(0, Cut::Outgoing);
        assert!(!reaches(&net, 0, 1), "0 cannot send");
        assert!(!reaches(&net, 1, 0), "0 cannot answer");
        let ns = net.ns(0);
        drop(net);
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&ns), "namespaces are removed");
    }
}
