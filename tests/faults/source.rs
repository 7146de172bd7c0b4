//! The source going away: the walsender terminated, and PostgreSQL restarting.

use crate::scenario::{Mode, RETRYING, Scenario};
use crate::servers::Postgres;
use crate::support::{Deadline, secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated() {
    let mut s = Scenario::start("walsender_kill", Mode::Run).await;
    let points = s.rng.spread(3, 10, 85);
    for (i, percent) in points.iter().enumerate() {
        s.at(*percent as f64 / 100.0).await;
        // After the previous termination the capture may still be reconnecting.
        let deadline = Deadline::new("the slot to be active again", secs(60));
        loop {
            s.assert_alive();
            let terminated = s
                .env
                .pg
                .query(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&s.pipeline.slot],
                )
                .await
                .expect("pg_terminate_backend can be called")
                .iter()
                .filter(|r| r.get::<_, bool>(0))
                .count();
            if terminated == 1 {
                break;
            }
            deadline.tick(&s.log_tails()).await;
        }
        eprintln!(
            "walsender_kill: walsender {} terminated at {} changes sent",
            i + 1,
            s.workload().sent()
        );
    }
    s.wait_log(
        RETRYING,
        points.len(),
        "the pipeline noticed every terminated walsender",
    )
    .await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted() {
    let mut s = Scenario::start("postgres_restart", Mode::Run).await;
    let postgres = Postgres::guard();
    let at = s.rng.between(25, 45);
    s.at(at as f64 / 100.0).await;
    eprintln!("postgres_restart: restart at {} changes sent", s.workload().sent());
    postgres.restart().await;
    eprintln!("postgres_restart: restarted at {} changes sent", s.workload().sent());
    s.reconnect_source().await;
    s.assert_alive();
    drop(postgres);
    s.wait_log(RETRYING, 1, "the pipeline noticed that PostgreSQL restarted")
        .await;
    s.finish().await;
}
