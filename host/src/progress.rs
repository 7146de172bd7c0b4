//! Progress of long one-off work (the initial copy, `verify`, `dlq replay`): a
//! bar on a terminal, and a log line every [`LOG_EVERY`] otherwise, so that a
//! log shipper sees the work move without one line per batch.
//!
//! Log lines written while a bar is drawn go through [`LogWriter`], which lifts
//! the bar out of the way for the line and draws it again below.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often progress is logged when no bar is drawn.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The bar being drawn, if any: log lines are written around it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);
/// Whether bars may be drawn: stderr is a terminal and logs are text.
static BARS: AtomicBool = AtomicBool::new(false);

/// Lets bars be drawn when stderr is a terminal and logs are text, not JSON lines.
pub fn allow_bars(text_logs: bool) {
    BARS.store(text_logs && std::io::stderr().is_terminal(), Ordering::Relaxed);
}

/// How far a piece of work has come.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Units done.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// Units per second since the work started.
    pub per_second: f64,
    /// Seconds left at that rate, when the total is known and the rate is not zero.
    pub eta_seconds: Option<f64>,
}

impl Rate {
    /// The rate of `done` of `total` units after `elapsed`.
    pub fn of(done: u64, total: Option<u64>, elapsed: Duration) -> Rate {
        let seconds = elapsed.as_secs_f64();
        let per_second = if seconds > 0.0 { done as f64 / seconds } else { 0.0 };
        let eta_seconds = total
            .filter(|_| per_second > 0.0)
            .map(|t| t.saturating_sub(done) as f64 / per_second);
        Rate {
            done,
            total,
            per_second,
            eta_seconds,
        }
    }
}

impl Rate {
    /// `120000 of 500000 rows (24%), 40000 rows/s, about 10 s left`.
    pub fn describe(&self, unit: &str) -> String {
        let mut text = match self.total {
            Some(total) if total > 0 => format!(
                "{} of {total} {unit} ({}%)",
                self.done,
                (self.done.min(total) * 100) / total
            ),
            _ => format!("{} {unit}", self.done),
        };
        text.push_str(&format!(", {:.0} {unit}/s", self.per_second));
        if let Some(eta) = self.eta_seconds.filter(|_| self.total.is_some_and(|t| self.done < t)) {
            text.push_str(&format!(", about {} left", seconds(eta)));
        }
        text
    }
}

/// `42 s`, `3 min 5 s`, `2 h 10 min`.
fn seconds(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// One piece of work that moves in steps: rows copied, tables verified, letters replayed.
pub struct Progress {
    what: String,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    logged: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts showing `what` (as "initial copy of public.orders"), counted in `unit`.
    pub fn start(what: impl Into<String>, unit: &'static str, total: Option<u64>) -> Progress {
        let what = what.into();
        let bar = BARS.load(Ordering::Relaxed).then(|| {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = match total {
                Some(_) => "{msg} [{bar:30}] {human_pos}/{human_len} {unit} ({percent}%), {per_sec}, {eta} left",
                None => "{msg} {spinner} {human_pos} {unit}, {per_sec}",
            };
            let style = ProgressStyle::with_template(&template.replace("{unit}", unit))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
            bar
        });
        let now = Instant::now();
        Progress {
            what,
            unit,
            total,
            done: 0,
            started: now,
            logged: now,
            bar,
        }
    }

    /// Counts `n` more units done. Without a bar, the first step and then one
    /// every [`LOG_EVERY`] are logged.
    pub fn advance(&mut self, n: u64) {
        let first = self.done == 0;
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if first || self.logged.elapsed() >= LOG_EVERY => {
                self.logged = Instant::now();
                self.log();
            }
            None => {}
        }
    }

    /// Shows `item` as what is being worked on now, as in "verify public.orders".
    pub fn working_on(&self, item: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} {item}", self.what));
        }
    }

    /// Prints `line` to stdout, lifting the bar out of its way.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Ends the work: the bar goes, and one line says how it went.
    pub fn finish(mut self) {
        self.clear();
        self.log();
    }

    fn log(&self) {
        tracing::info!("{}: {}", self.what, self.rate().describe(self.unit));
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Units done, and the rate so far.
    pub fn rate(&self) -> Rate {
        Rate::of(self.done, self.total, self.started.elapsed())
    }
}

impl Drop for Progress {
    /// Work abandoned (an error, a shutdown) takes its bar with it, and says nothing.
    fn drop(&mut self) {
        self.clear();
    }
}

/// Where text log lines go: stderr, around the bar being drawn.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_time_left_follow_from_the_count() {
        let r = Rate::of(120_000, Some(500_000), Duration::from_secs(3));
        assert_eq!(r.per_second, 40_000.0);
        assert_eq!(r.eta_seconds, Some(9.5));
        assert_eq!(
            r.describe("rows"),
            "120000 of 500000 rows (24%), 40000 rows/s, about 10 s left"
        );
    }

    #[test]
    fn finished_work_has_no_time_left() {
        let r = Rate::of(10, Some(10), Duration::from_secs(2));
        assert_eq!(r.describe("rows"), "10 of 10 rows (100%), 5 rows/s");
    }

    #[test]
    fn nothing_done_yet_has_no_time_left() {
        let r = Rate::of(0, Some(10), Duration::ZERO);
        assert_eq!((r.per_second, r.eta_seconds), (0.0, None));
        assert_eq!(r.describe("rows"), "0 of 10 rows (0%), 0 rows/s");
    }

    #[test]
    fn an_unknown_total_shows_the_count_alone() {
        let r = Rate::of(7, None, Duration::from_secs(7));
        assert_eq!(r.describe("letters"), "7 letters, 1 letters/s");
        assert_eq!(r.eta_seconds, None);
    }

    #[test]
    fn long_waits_read_in_minutes_and_hours() {
        assert_eq!(seconds(185.0), "3 min 5 s");
        assert_eq!(seconds(7_800.0), "2 h 10 min");
    }
}
