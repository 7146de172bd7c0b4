//! A throwaway PostgreSQL cluster with settings the shared server must not have.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use super::env::unique;

/// Where this machine's PostgreSQL binaries live.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster, stopped and removed on drop. It trusts every local connection.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    /// initdb and start a cluster with extra `-c name=value` settings.
    pub fn start(settings: &[&str]) -> Cluster {
        let dir = std::env::temp_dir().join(unique("cluster"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let cluster = Cluster { dir, port: free_port() };
        let data = cluster.dir.join("data");
        if is_root() {
            // PostgreSQL refuses to run as root: hand the directory to postgres.
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir));
        }
        run(as_postgres(&format!("{PG_BIN}/initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data));
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            cluster.port,
            cluster.dir.display()
        );
        for s in settings {
            options.push_str(&format!(" -c {s}"));
        }
        run(as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.join("server.log"))
            .args(["-o", &options, "start"]));
        cluster
    }

    /// The server's URL without a database.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", program]);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}
