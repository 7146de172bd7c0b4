//! `kill -9` of the capture and of the apply, each a process of its own.

use crate::scenario::{Mode, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_killed_at_random_points() {
    let mut s = Scenario::start("capture_kill", Mode::Split).await;
    // Four kills spread over the workload, each at a random point of its slice;
    // the new capture resumes from the slot's confirmed position.
    let points = s.rng.spread(4, 5, 90);
    for (i, percent) in points.iter().enumerate() {
        s.at(*percent as f64 / 100.0).await;
        s.pause(0, 400).await;
        s.kill_capture();
        eprintln!("capture_kill: kill {} at {} changes sent", i + 1, s.workload().sent());
        s.pause(0, 1_500).await;
        s.spawn_capture();
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_at_random_moments() {
    let mut s = Scenario::start("apply_kill", Mode::Split).await;
    // The dangerous instant is between the apply's MariaDB commit and its ack:
    // the messages come back, and the offsets row must make the apply skip them.
    // A test cannot stop the process at exactly that instant, so it kills it
    // many times at random moments under load. How often a kill did land there
    // shows in the count of skipped redeliveries that `finish` prints.
    // Each round kills it twice: once at a random moment, and again while the
    // new apply works through the backlog that built up meanwhile, committing
    // large groups back to back.
    let points = s.rng.spread(7, 5, 90);
    let mut kills = 0;
    for percent in points {
        s.at(percent as f64 / 100.0).await;
        s.pause(0, 300).await;
        s.kill_apply();
        kills += 1;
        eprintln!("apply_kill: kill {kills} at {} changes sent", s.workload().sent());
        s.pause(1_000, 2_500).await;
        s.spawn_apply();
        s.pause(150, 900).await;
        s.kill_apply();
        kills += 1;
        eprintln!(
            "apply_kill: kill {kills} (catching up) at {} changes sent",
            s.workload().sent()
        );
        s.pause(0, 300).await;
        s.spawn_apply();
    }
    s.finish().await;
}
