//! The wasmcdc binary, driven only through its command-line contract.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::secs;

/// The `wasmcdc` binary next to this test executable, in `target/<profile>/`.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/wasmcdc
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("wasmcdc{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the wasmcdc binary is missing at {}; build it first with `cargo build -p wasmcdc`",
        bin.display()
    );
    bin
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// Where spawned processes write their output: `target/e2e-logs/`.
pub fn log_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test executable lives in target/<profile>/deps");
    let dir = target.join("e2e-logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// The flags of one pipeline: everything the command-line contract takes.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// `--pg-url`.
    pub pg_url: String,
    /// `--mariadb-url`.
    pub mariadb_url: String,
    /// `--amqp-url`.
    pub amqp_url: String,
    /// `--slot`: the pipeline's name.
    pub slot: String,
    /// `--tables`, comma-separated.
    pub tables: String,
    /// `--transform`, in chain order.
    pub transforms: Vec<PathBuf>,
    /// `--transform-config`, `MODULE.KEY=VALUE`.
    pub transform_config: Vec<String>,
    /// Other configuration keys, given as their `WASMCDC_*` variables.
    pub settings: Vec<(String, String)>,
}

impl Pipeline {
    /// The same pipeline with another `--tables`.
    pub fn tables(&self, tables: &str) -> Self {
        Pipeline {
            tables: tables.to_owned(),
            ..self.clone()
        }
    }

    /// The same pipeline with another `--pg-url`.
    pub fn pg_url(&self, url: &str) -> Self {
        Pipeline {
            pg_url: url.to_owned(),
            ..self.clone()
        }
    }

    /// The same pipeline with another `--mariadb-url`.
    pub fn mariadb_url(&self, url: &str) -> Self {
        Pipeline {
            mariadb_url: url.to_owned(),
            ..self.clone()
        }
    }

    /// The same pipeline with another `--amqp-url`.
    pub fn amqp_url(&self, url: &str) -> Self {
        Pipeline {
            amqp_url: url.to_owned(),
            ..self.clone()
        }
    }

    /// The same pipeline with `module` appended to its transform chain.
    pub fn transform(&self, module: &Path) -> Self {
        let mut p = self.clone();
        p.transforms.push(module.to_path_buf());
        p
    }

    /// The same pipeline with `entry` (`MODULE.KEY=VALUE`) added to its `--transform-config`.
    pub fn transform_config(&self, entry: &str) -> Self {
        let mut p = self.clone();
        p.transform_config.push(entry.to_owned());
        p
    }

    /// The same pipeline with the configuration key `key` (as in the
    /// configuration file, for example `prefetch`) set to `value`. Keys that
    /// `command` passes as flags or sets itself are refused: the flag would
    /// win, and the setting would be silently ignored.
    pub fn setting(&self, key: &str, value: &str) -> Self {
        assert!(
            ![
                "pg-url",
                "mariadb-url",
                "amqp-url",
                "slot",
                "tables",
                "transform",
                "transform-config",
                "metrics-addr"
            ]
            .contains(&key),
            "`{key}` has a builder method or is set by `command`"
        );
        let mut p = self.clone();
        p.settings.push((key.to_owned(), value.to_owned()));
        p
    }

    /// `wasmcdc <command...>` with this pipeline's flags and none from the environment.
    pub fn command(&self, command: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(command)
            .args(["--pg-url", &self.pg_url])
            .args(["--mariadb-url", &self.mariadb_url])
            .args(["--amqp-url", &self.amqp_url])
            .args(["--slot", &self.slot])
            .args(["--tables", &self.tables]);
        for t in &self.transforms {
            cmd.arg("--transform").arg(t);
        }
        for c in &self.transform_config {
            cmd.arg("--transform-config").arg(c);
        }
        // Only what the test says: none of the runner's own settings.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("WASMCDC_") {
                cmd.env_remove(var);
            }
        }
        cmd.env_remove("RUST_BACKTRACE");
        for (key, value) in &self.settings {
            cmd.env(format!("WASMCDC_{}", key.to_uppercase().replace('-', "_")), value);
        }
        // Tests run side by side: each process serves on a port of its own, named in its log.
        cmd.env("WASMCDC_METRICS_ADDR", "127.0.0.1:0");
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a command to completion; fails the test if it takes longer than `limit`.
    pub async fn output(&self, command: &[&str], limit: Duration) -> Output {
        let mut cmd = tokio::process::Command::from(self.command(command));
        cmd.kill_on_drop(true);
        match tokio::time::timeout(limit, cmd.output()).await {
            Ok(out) => out.unwrap_or_else(|e| panic!("cannot start wasmcdc {command:?}: {e}")),
            Err(_) => panic!("wasmcdc {command:?} did not finish within {limit:?}"),
        }
    }

    /// Runs a command with `input` on its standard input; fails the test if it takes longer than `limit`.
    pub async fn output_with_input(&self, command: &[&str], input: &str, limit: Duration) -> Output {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = tokio::process::Command::from(self.command(command));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start wasmcdc {command:?}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A command that fails early closes its end; what it says matters, not the write.
        let _ = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
        match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(out) => out.unwrap_or_else(|e| panic!("wasmcdc {command:?} could not be awaited: {e}")),
            Err(_) => panic!("wasmcdc {command:?} did not finish within {limit:?}"),
        }
    }

    /// `wasmcdc dlq list`: the dead letters of this pipeline, in queue order (they stay in the queue).
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let out = self.output(&["dlq", "list", "--limit", "1000"], secs(60)).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "wasmcdc dlq list failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        parse_dead_letters(&stdout)
    }

    /// Waits up to 60 s, while `running` stays alive, until the pipeline holds at
    /// least `count` dead letters, and returns them.
    pub async fn wait_dead_letters(&self, running: &mut Running, count: usize) -> Vec<DeadLetter> {
        let deadline = super::Deadline::new(format!("{count} dead letters"), secs(60));
        loop {
            running.assert_alive();
            let letters = self.dead_letters().await;
            if letters.len() >= count {
                return letters;
            }
            deadline.tick(&format!("{letters:?}\n{}", running.log_tail())).await;
        }
    }

    /// `wasmcdc status`: its standard output; fails the test if it fails.
    pub async fn status(&self) -> String {
        let out = self.output(&["status"], secs(60)).await;
        assert!(
            out.status.success(),
            "wasmcdc status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `wasmcdc verify`: its exit status and standard output.
    pub async fn verify(&self) -> (ExitStatus, String) {
        let out = self.output(&["verify"], secs(120)).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() && stdout.is_empty() {
            panic!(
                "wasmcdc verify failed without a report ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (out.status, stdout)
    }

    /// Asserts that `wasmcdc verify` finds source and target equal.
    pub async fn assert_verified(&self) {
        let (status, stdout) = self.verify().await;
        assert!(
            status.success() && stdout.contains("equal"),
            "wasmcdc verify found differences ({status}):\n{stdout}"
        );
    }

    /// Asserts that a command fails within `limit` with exactly one `error: `
    /// line containing every one of `phrases`, and without a panic or a backtrace.
    /// Returns the error line.
    pub async fn expect_error(&self, command: &[&str], phrases: &[&str], limit: Duration) -> String {
        let out = self.output(command, limit).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "wasmcdc {command:?} succeeded but should have failed with {phrases:?}; stderr:\n{stderr}"
        );
        assert_clean_error(&stderr, phrases)
    }

    /// Spawns `wasmcdc run`, its output going to a log file.
    pub fn spawn_run(&self) -> Running {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let log = log_dir().join(format!("{}.run{n}.log", self.slot));
        let file = File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let out = file.try_clone().expect("a log file handle can be cloned");
        let child = self
            .command(&["run"])
            .stdout(out)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start wasmcdc run: {e}"));
        Running {
            child: Some(child),
            log,
            label: format!("wasmcdc run --slot {}", self.slot),
        }
    }
}

/// One entry of `wasmcdc dlq list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// `transform`, `apply` or `decode`.
    pub stage: String,
    /// Commit LSN of the source transaction, `-` when unknown.
    pub lsn: String,
    /// `schema.table`, `-` when unknown.
    pub table: String,
    /// The sentence saying why.
    pub reason: String,
}

/// Reads `dlq list` output: a count line, then per letter
/// `#N stage=S lsn=L table=T (...)` followed by an indented reason line.
fn parse_dead_letters(stdout: &str) -> Vec<DeadLetter> {
    let mut letters = Vec::new();
    let mut lines = stdout.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with('#') {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("dlq list line {line:?} has no {name}"))
                .to_owned()
        };
        let reason = lines
            .next()
            .unwrap_or_else(|| panic!("dlq list line {line:?} is not followed by a reason:\n{stdout}"))
            .trim()
            .to_owned();
        letters.push(DeadLetter {
            stage: field("stage="),
            lsn: field("lsn="),
            table: field("table="),
            reason,
        });
    }
    letters
}

/// A transform component built in `transforms/`, by its file name without `.wasm`.
pub fn guest(name: &str) -> PathBuf {
    let path = repo_root().join(format!("transforms/target/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.is_file(),
        "the {name} component is missing at {}; build it with `cargo build --target wasm32-wasip2 --release` inside transforms/",
        path.display()
    );
    path
}

impl Pipeline {
    /// Spawns `wasmcdc <command>` (for example `capture` or `apply`), its output going to a
    /// log file, with `RUST_LOG` set to `rust_log` when given.
    pub fn spawn_command(&self, command: &str, rust_log: Option<&str>) -> Running {
        self.spawn_args(&[command], rust_log)
    }

    /// Spawns `wasmcdc <args...>` (for example `["dlq", "list"]`), like `spawn_command`.
    pub fn spawn_args(&self, args: &[&str], rust_log: Option<&str>) -> Running {
        static SPAWNS: AtomicUsize = AtomicUsize::new(0);
        let n = SPAWNS.fetch_add(1, Ordering::Relaxed);
        let name = args.join("-");
        let log = log_dir().join(format!("{}.{name}{n}.log", self.slot));
        let file = File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let out = file.try_clone().expect("a log file handle can be cloned");
        let mut cmd = self.command(args);
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .stdout(out)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start wasmcdc {args:?}: {e}"));
        Running {
            child: Some(child),
            log,
            label: format!("wasmcdc {} --slot {}", args.join(" "), self.slot),
        }
    }
}

/// Checks a failed command's stderr: one `error: ` line naming every one of
/// `phrases`, no panic, no backtrace. Returns that line.
pub fn assert_clean_error(stderr: &str, phrases: &[&str]) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one line starting with 'error: '; stderr:\n{stderr}"
    );
    for phrase in phrases {
        assert!(
            errors[0].contains(phrase),
            "the error line does not mention {phrase:?}: {}\nstderr:\n{stderr}",
            errors[0]
        );
    }
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "stderr shows a panic or a backtrace:\n{stderr}"
    );
    errors[0].to_owned()
}

/// A `wasmcdc run` process. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct Running {
    child: Option<Child>,
    log: PathBuf,
    label: String,
}

impl Running {
    /// The process's combined output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the output, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Fails the test if the process has exited.
    pub fn assert_alive(&mut self) {
        let child = self.child.as_mut().expect("the process is running");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} exited early ({status})\n{}", self.label, self.log_tail());
        }
    }

    /// The `http://HOST:PORT` the process serves metrics, probes and the status page on, from its log.
    pub async fn metrics_url(&mut self) -> String {
        const SERVING: &str = "serving metrics, probes and the status page on ";
        let deadline = super::Deadline::new(format!("{} to serve metrics", self.label), secs(30));
        loop {
            self.assert_alive();
            let log = self.log();
            if let Some(at) = log.find(SERVING) {
                let url = &log[at + SERVING.len()..];
                let end = url.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(url.len());
                return url[..end].trim_end_matches('/').to_owned();
            }
            deadline.tick(&self.log_tail()).await;
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("the process is running").id()
    }

    /// The process's peak resident set size (`VmHWM`) in KiB, while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
    }

    /// Waits up to `limit` for the process to exit by itself; its status if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the process is running");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit. Returns
    /// how long it took and its status, or `None` if it was still running at
    /// `limit` (it is then killed with SIGKILL).
    pub async fn terminate_within(&mut self, limit: Duration) -> (Duration, Option<ExitStatus>) {
        let child = self.child.as_mut().expect("the process is running");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} had already exited ({status})\n{}", self.label, self.log_tail());
        }
        terminate(child);
        let start = Instant::now();
        let status = self.wait_exit(limit).await;
        let took = start.elapsed();
        if status.is_none() {
            self.kill();
        }
        (took, status)
    }

    /// Kills the process with SIGKILL, as a crash or an out-of-memory kill would, and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the process is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM and asserts a clean exit (status 0) within 30 s.
    pub async fn stop(mut self) {
        let mut child = self.child.take().expect("the process is running");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} had already exited ({status})\n{}", self.label, self.log_tail());
        }
        terminate(&child);
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if start.elapsed() > secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within 30 s of SIGTERM\n{}",
                    self.label,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; expected 0\n{}",
            self.label,
            self.log_tail()
        );
    }
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        terminate(&child);
        let start = Instant::now();
        while start.elapsed() < secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
