//! A killed owner: this binary run again as `registry-bench owner URL INSTANCE_JSON`
//! registers one instance and waits; it is killed with SIGKILL, and `get_service` is polled
//! until the instance is no longer listed. The time is set against the TTL the owner
//! registered with (ZooKeeper: its session timeout; Nacos: the server notices the closed
//! connection).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use registry::ServiceInstance;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::items::{timed, Bench, CALL};
use crate::model::{instance, Space};
use crate::stats::{Pairs, Row, Side};

/// How often the list is read while waiting for the instance to go.
const POLL: Duration = Duration::from_millis(20);

/// The owner mode: connect, register, say `registered`, then wait until standard input
/// closes (or the process is killed).
pub async fn run_owner(url: &str, json: &str) -> Result<()> {
    let instance: ServiceInstance = serde_json::from_str(json).context("the instance JSON")?;
    let registry = registry::connect(url)
        .await
        .with_context(|| format!("connect {url}"))?;
    registry.register(&instance).await.context("register")?;
    println!("registered");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while lines.next_line().await?.is_some() {}
    registry.close().await.context("close")?;
    Ok(())
}

impl Bench {
    /// The URL the owner registers with, its TTL and the target it is held to.
    fn owner_url(&self) -> Option<(String, Duration, Duration, String)> {
        let ttl = self.opts.ttl;
        let secs = ttl.as_secs();
        let slack = Duration::from_secs(1);
        match self.backend {
            "etcd" => Some((
                format!("{}&ttl={secs}s", self.url),
                ttl,
                ttl + slack,
                format!("lease TTL {secs} s"),
            )),
            "consul" => Some((
                format!("{}&ttl={secs}s", self.url),
                ttl,
                ttl + slack,
                format!("check TTL {secs} s"),
            )),
            "zookeeper" => Some((
                format!("{}&session_timeout={secs}s", self.url),
                ttl,
                ttl + slack,
                format!("session timeout {secs} s"),
            )),
            // A killed process' connection is closed by the kernel, and Nacos drops its
            // ephemeral instances when it notices (registry-nacos' README: about a second).
            "nacos" => Some((
                self.url.clone(),
                Duration::from_secs(1),
                Duration::from_secs(2),
                "Nacos drops a closed connection's instances (documented: about 1 s)".to_owned(),
            )),
            _ => None,
        }
    }

    /// Kills `--owner-samples` owners and times their instances' leaving.
    pub async fn owner_killed(&mut self) {
        let work = "killed owner's instance gone from get_service";
        let Some((url, ttl, limit, what)) = self.owner_url() else {
            let why = "memory:// lives inside the owner's process";
            self.push(Row::skipped(self.backend, "owner-killed", work, why));
            return;
        };
        let mut pairs = Pairs::default();
        let mut result = Ok(());
        for s in 0..self.opts.owner_samples {
            match self.one_owner(&url, s, ttl).await {
                Ok(took) => pairs.push(Side::Ours, took),
                Err(e) => {
                    result = Err(e.context(format!("owner {s}")));
                    break;
                }
            }
        }
        let row = result.map(|()| {
            let worst = pairs.ours.iter().max().copied().unwrap_or_default();
            let met = if worst <= limit { "met" } else { "NOT met" };
            Row::measured(self.backend, "owner-killed", work, &pairs)
                .note(format!(
                    "{what}; target ≤ {:.1} s: {met} (slowest {:.2} s)",
                    limit.as_secs_f64(),
                    worst.as_secs_f64()
                ))
                .extra("ttl_s", ttl.as_secs_f64())
                .extra("limit_s", limit.as_secs_f64())
        });
        self.record("owner-killed", work, row);
    }

    async fn one_owner(&self, url: &str, s: usize, ttl: Duration) -> Result<Duration> {
        let service = self.service("owner");
        let id = format!("{}-owner{s}", self.run);
        let me = instance(&service, &id, Space::Owner, s, 0)?;
        let exe = std::env::current_exe().context("this program's path")?;
        let mut child = Command::new(&exe)
            .arg("owner")
            .arg(url)
            .arg(me.to_json())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", exe.display()))?;
        let stdout = child.stdout.take().context("the owner's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(CALL, lines.next_line())
            .await
            .map_err(|_| anyhow!("the owner did not register within {CALL:?}"))??;
        if line.as_deref() != Some("registered") {
            bail!("the owner said {line:?}, not \"registered\"");
        }
        let listed = |list: &[ServiceInstance]| list.iter().any(|i| i.id == id);
        let start = Instant::now();
        while !listed(&timed(CALL, self.ours.get_service(&service)).await?.1) {
            if start.elapsed() > CALL {
                bail!("the owner's instance was not listed within {CALL:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let killed = Instant::now();
        child.start_kill().context("SIGKILL the owner")?;
        child.wait().await.context("reap the owner")?;
        let deadline = ttl * 3 + CALL;
        while listed(&timed(CALL, self.ours.get_service(&service)).await?.1) {
            if killed.elapsed() > deadline {
                bail!("the killed owner's instance is still listed after {deadline:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(killed.elapsed())
    }
}
