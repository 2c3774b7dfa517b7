//! A network of a test's own, for partitions: one network namespace per simulated host, each
//! joined by a veth pair to a router namespace of the network's own, which forwards between
//! them. A partition is a pair of `blackhole` rules in the router: packets between the two
//! hosts vanish (as on a real network cut: no reset, connections hang), while each keeps
//! talking to every other host. Nothing is added to the machine's own namespace; dropping the
//! [`Net`] deletes its namespaces (and with them every interface and rule), and a network
//! left behind by a test process that died is deleted by the next one.
//!
//! Host `k` has the address `10.77.{k+1}.2`; a server runs in a host's namespace through
//! [`Net::spec`], and test code through [`Net::run`], on a thread of its own that entered the
//! host's namespace (with a Tokio runtime of its own, whose threads inherit it).
//!
//! Needs `CAP_SYS_ADMIN` and `CAP_NET_ADMIN` (root) and iproute2's `ip`. The namespace is
//! entered with the `nix` crate's safe `setns` (the workspace forbids `unsafe`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::ServerSpec;

/// The prefix of every namespace this module creates (`rrnet-PID-N-...`).
const PREFIX: &str = "rrnet-";

/// A network of a test's own: `hosts` namespaces and a router (module docs).
pub struct Net {
    name: String,
    hosts: usize,
    /// The pairs of hosts cut from each other now.
    cuts: Mutex<BTreeSet<(usize, usize)>>,
}

/// Runs `ip ARGS`, panicking with its output when it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {}: {e}", args.join(" ")));
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Deletes the namespaces of networks whose test process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

impl Net {
    /// Creates `hosts` host namespaces and the router between them. Fails the test when the
    /// machine does not allow it (namespaces need root).
    pub fn create(hosts: usize) -> Net {
        assert!((1..=200).contains(&hosts), "a network has 1 to 200 hosts");
        sweep_stale();
        static NETS: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::SeqCst)
        );
        let net = Net {
            name,
            hosts,
            cuts: Mutex::new(BTreeSet::new()),
        };
        let router = net.router();
        ip(&["netns", "add", &router]);
        ip(&["-n", &router, "link", "set", "lo", "up"]);
        // Forwarding is a setting of the namespace, not of the machine.
        let forward = Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .expect("run sysctl in the router's namespace");
        assert!(forward.success(), "enable forwarding in {router}");
        for host in 0..hosts {
            let ns = net.namespace(host);
            let inside = format!("h{host}");
            let subnet = host + 1;
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &inside, "netns",
                &router,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.{subnet}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("10.77.{subnet}.1/24"),
                "dev",
                &inside,
            ]);
            ip(&["-n", &router, "link", "set", &inside, "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.77.{subnet}.1"),
            ]);
        }
        net
    }

    fn router(&self) -> String {
        format!("{}-router", self.name)
    }

    /// The name of host `host`'s namespace.
    pub fn namespace(&self, host: usize) -> String {
        assert!(host < self.hosts, "no host {host}");
        format!("{}-h{host}", self.name)
    }

    /// How many hosts.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Host `host`'s address.
    pub fn address(&self, host: usize) -> IpAddr {
        assert!(host < self.hosts, "no host {host}");
        IpAddr::V4(Ipv4Addr::new(10, 77, host as u8 + 1, 2))
    }

    /// `spec` run in host `host`'s namespace (through `ip netns exec`, which execs the
    /// program: the process is the server's own, and signals reach it).
    pub fn spec(&self, host: usize, spec: ServerSpec) -> ServerSpec {
        let ns = self.namespace(host);
        let ServerSpec {
            program,
            args,
            ready,
        } = spec;
        ServerSpec {
            program: PathBuf::from("ip"),
            args: Box::new(move |data| {
                let mut all: Vec<OsString> = vec!["netns".into(), "exec".into(), ns.clone().into()];
                all.push(program.clone().into());
                all.extend(args(data));
                all
            }),
            ready,
        }
    }

    /// Cuts hosts `a` and `b` off from each other (both directions), until
    /// [`heal`](Self::heal). Idempotent.
    pub fn cut(&self, a: usize, b: usize) {
        let pair = (a.min(b), a.max(b));
        assert!(a != b && pair.1 < self.hosts, "no pair of hosts {a}, {b}");
        if self.cuts().insert(pair) {
            self.rules("add", pair);
        }
    }

    /// Cuts `host` off from every host in `others`.
    pub fn isolate(&self, host: usize, others: impl IntoIterator<Item = usize>) {
        for other in others {
            if other != host {
                self.cut(host, other);
            }
        }
    }

    /// Ends every cut.
    pub fn heal(&self) {
        for pair in std::mem::take(&mut *self.cuts()) {
            self.rules("del", pair);
        }
    }

    fn cuts(&self) -> std::sync::MutexGuard<'_, BTreeSet<(usize, usize)>> {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rules(&self, action: &str, (a, b): (usize, usize)) {
        let router = self.router();
        let (a, b) = (self.address(a).to_string(), self.address(b).to_string());
        for (from, to) in [(&a, &b), (&b, &a)] {
            ip(&[
                "-n",
                &router,
                "rule",
                action,
                "from",
                from,
                "to",
                to,
                "blackhole",
            ]);
        }
    }

    /// Runs the future `make` builds on a thread of its own in host `host`'s namespace,
    /// with a multi-threaded Tokio runtime of its own (2 workers), and returns its output:
    /// every socket the test code opens is the host's. A panic in it fails the caller too.
    pub fn run<F, Fut>(&self, host: usize, make: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        let path = PathBuf::from("/run/netns").join(self.namespace(host));
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("enter {}: {e}", path.display()));
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a Tokio runtime");
                runtime.block_on(make())
            });
            match thread.join() {
                Ok(output) => output,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in 0..self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(host)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.router()])
            .output();
    }
}
