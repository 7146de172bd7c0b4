//! MariaDB restarting under the apply.

use crate::scenario::{Mode, RETRYING, Scenario};
use crate::servers::MariaDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restarted() {
    let mut s = Scenario::start("mariadb_restart", Mode::Run).await;
    let mariadb = MariaDb::guard();
    let at = s.rng.between(25, 45);
    s.at(at as f64 / 100.0).await;
    eprintln!("mariadb_restart: shutdown at {} changes sent", s.workload().sent());
    mariadb.stop().await;
    s.pause(3_000, 6_000).await;
    mariadb.start().await;
    eprintln!(
        "mariadb_restart: answering again at {} changes sent",
        s.workload().sent()
    );
    s.assert_alive();
    drop(mariadb);
    s.wait_log(RETRYING, 1, "the pipeline noticed that MariaDB stopped")
        .await;
    s.finish().await;
}
