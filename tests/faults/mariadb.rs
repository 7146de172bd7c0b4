//! MariaDB restarting under the apply, with the readiness probe following it.

use crate::scenario::{Mode, RETRYING, Scenario};
use crate::servers::MariaDb;
use crate::support::secs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restarted() {
    let mut s = Scenario::start("mariadb_restart", Mode::Run).await;
    let mariadb = MariaDb::guard();
    let at = s.rng.between(25, 45);
    s.at(at as f64 / 100.0).await;
    s.wait_ready(200, secs(30)).await;
    eprintln!("mariadb_restart: shutdown at {} changes sent", s.workload().sent());
    mariadb.stop().await;
    s.pause(3_000, 6_000).await;
    // The probe follows the real server: not ready while the apply cannot write.
    let why = s.wait_ready(503, secs(60)).await;
    assert!(why.contains("MariaDB"), "{why}");
    mariadb.start().await;
    eprintln!(
        "mariadb_restart: answering again at {} changes sent",
        s.workload().sent()
    );
    s.assert_alive();
    drop(mariadb);
    s.wait_log(RETRYING, 1, "the pipeline noticed that MariaDB stopped")
        .await;
    s.wait_ready(200, secs(120)).await;
    s.finish().await;
}
