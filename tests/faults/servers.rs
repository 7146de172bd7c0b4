//! Stopping, restarting and throttling the shared servers, each behind a guard
//! that puts the server back as it was when the guard is dropped, also when
//! the scenario fails half-way.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::broker::QueueCap;
use crate::support::secs;

/// The local PostgreSQL cluster.
const PG_VERSION: &str = "15";
const PG_CLUSTER: &str = "main";
const MARIADBD: &str = "/usr/sbin/mariadbd";

/// Runs a server tool to completion and returns its output.
pub async fn tool(program: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(secs(180), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run {program}: {e}"),
        Err(_) => panic!("{program} {args:?} did not finish within 180 s"),
    }
}

/// Runs a server tool and fails the test if it fails.
pub async fn must(program: &str, args: &[&str]) -> String {
    let out = tool(program, args).await;
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same, blocking, for guards: problems are reported, never raised.
fn restore(program: &str, args: &[&str]) -> bool {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "restoring: {program} {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("restoring: cannot run {program}: {e}");
            false
        }
    }
}

/// Polls `check` every 250 ms for up to `limit`.
fn wait_blocking(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

// --- RabbitMQ -------------------------------------------------------------------

/// RabbitMQ under test: the guard restarts the application, restores the
/// memory watermark and removes the test's policy.
pub struct Rabbit {
    watermark: String,
    cap: Option<QueueCap>,
}

impl Rabbit {
    /// Remembers the memory watermark as it is now.
    pub async fn guard() -> Rabbit {
        let out = must(
            "rabbitmqctl",
            &["-q", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."],
        )
        .await;
        let watermark = out.trim().to_owned();
        assert!(
            watermark.parse::<f64>().is_ok(),
            "the memory watermark is {watermark:?}, not a fraction; this test only knows how to restore a fraction"
        );
        Rabbit { watermark, cap: None }
    }

    /// `rabbitmqctl stop_app`: every connection drops and the broker refuses new ones.
    pub async fn stop_app(&self) {
        must("rabbitmqctl", &["-q", "stop_app"]).await;
    }

    /// `rabbitmqctl start_app`, then waits until the broker has started.
    pub async fn start_app(&self) {
        must("rabbitmqctl", &["-q", "start_app"]).await;
        must("rabbitmqctl", &["-q", "await_startup", "--timeout", "120"]).await;
    }

    /// A memory alarm: RabbitMQ blocks every publishing connection.
    pub async fn raise_memory_alarm(&self) {
        must("rabbitmqctl", &["-q", "set_vm_memory_high_watermark", "0.0000001"]).await;
    }

    /// Puts the memory watermark back.
    pub async fn clear_memory_alarm(&self) {
        must("rabbitmqctl", &["-q", "set_vm_memory_high_watermark", &self.watermark]).await;
    }

    /// Connection states as RabbitMQ reports them (`running`, `blocking`, `blocked`, ...).
    pub async fn connection_states(&self) -> Vec<String> {
        let out = must(
            "rabbitmqctl",
            &["-q", "list_connections", "state", "--no-table-headers"],
        )
        .await;
        out.lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// A policy that caps `queue` at `max_length` ready messages and rejects (nacks) publishes beyond.
    pub async fn cap_queue(&mut self, name: &str, queue: &str, max_length: u32) {
        self.cap = Some(QueueCap::set(name, queue, max_length).await);
    }

    /// Removes the policy set by `cap_queue`.
    pub async fn uncap_queue(&mut self) {
        if let Some(cap) = self.cap.take() {
            cap.clear().await;
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // Dropping the cap removes its policy.
        drop(self.cap.take());
        restore("rabbitmqctl", &["-q", "set_vm_memory_high_watermark", &self.watermark]);
        // Starting a running application is a no-op.
        restore("rabbitmqctl", &["-q", "start_app"]);
        restore("rabbitmqctl", &["-q", "await_startup", "--timeout", "120"]);
    }
}

// --- MariaDB --------------------------------------------------------------------

fn mariadb_answers() -> bool {
    Command::new("mariadb")
        .args(["-uroot", "-e", "SELECT 1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn mariadbd_running() -> bool {
    // start-stop-daemon --status: 0 running, 3 not running.
    Command::new("start-stop-daemon")
        .args(["--status", "--exec", MARIADBD])
        .status()
        .is_ok_and(|s| s.success())
}

/// MariaDB under test: the guard starts `mariadbd` again if it is not answering.
pub struct MariaDb;

impl MariaDb {
    /// Takes charge of MariaDB; it must be answering now.
    pub fn guard() -> MariaDb {
        assert!(
            mariadb_answers(),
            "MariaDB is not answering before the test; run scripts/services.sh"
        );
        MariaDb
    }

    /// Shuts `mariadbd` down and waits until the process is gone.
    pub async fn stop(&self) {
        must("mariadb-admin", &["-uroot", "shutdown"]).await;
        let gone = tokio::task::spawn_blocking(|| wait_blocking(secs(60), || !mariadbd_running()))
            .await
            .expect("the wait does not panic");
        assert!(gone, "mariadbd still runs 60 s after `mariadb-admin shutdown`");
    }

    /// Starts `mariadbd` and waits until it answers.
    pub async fn start(&self) {
        must(
            "start-stop-daemon",
            &["--start", "--oknodo", "--background", "--exec", MARIADBD],
        )
        .await;
        let up = tokio::task::spawn_blocking(|| wait_blocking(secs(60), mariadb_answers))
            .await
            .expect("the wait does not panic");
        assert!(
            up,
            "MariaDB did not answer within 60 s of starting it; see /var/log/mysql/error.log"
        );
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if mariadb_answers() {
            return;
        }
        // A shutdown may still be under way; --oknodo would then do nothing.
        wait_blocking(secs(60), || !mariadbd_running());
        restore(
            "start-stop-daemon",
            &["--start", "--oknodo", "--background", "--exec", MARIADBD],
        );
        if !wait_blocking(secs(60), mariadb_answers) {
            eprintln!("restoring: MariaDB does not answer after starting it; see /var/log/mysql/error.log");
        }
    }
}

// --- PostgreSQL -----------------------------------------------------------------

fn pg_online() -> bool {
    Command::new("pg_lsclusters").arg("-h").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout).lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[0] == PG_VERSION && f[1] == PG_CLUSTER && f[3].starts_with("online")
        })
    })
}

/// PostgreSQL under test: the guard starts the cluster again if it is down.
pub struct Postgres;

impl Postgres {
    /// Takes charge of the cluster; it must be online now.
    pub fn guard() -> Postgres {
        assert!(
            pg_online(),
            "PostgreSQL {PG_VERSION}/{PG_CLUSTER} is not online before the test"
        );
        Postgres
    }

    /// `pg_ctlcluster restart -m immediate`: the server stops as if it crashed
    /// (no shutdown checkpoint, sessions cut mid-transaction) and recovers from WAL.
    pub async fn restart_immediate(&self) {
        must(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                "-m",
                "immediate",
                PG_VERSION,
                PG_CLUSTER,
                "restart",
            ],
        )
        .await;
    }

    /// `pg_ctlcluster restart` (fast shutdown: every session is disconnected).
    pub async fn restart(&self) {
        must(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", PG_VERSION, PG_CLUSTER, "restart"],
        )
        .await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !pg_online() {
            restore(
                "pg_ctlcluster",
                &["--skip-systemctl-redirect", PG_VERSION, PG_CLUSTER, "start"],
            );
        }
    }
}
