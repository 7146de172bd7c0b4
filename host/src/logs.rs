//! Logs: one subscriber for every command, as text for people or JSON lines for log
//! shippers, with library noise about conditions the pipeline expects kept out.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written to stderr (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

/// Logs to stderr in `format`; `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    crate::progress::allow_bars(format == LogFormat::Text);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(|| crate::progress::LogWriter)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(Expected)
        .with(text)
        .with(json)
        .init();
}

/// Texts that a library may report as an error right now although the pipeline expects
/// the condition, such as RabbitMQ's `NOT_FOUND` for a queue that is being probed.
static EXPECTED: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// How many texts [`EXPECTED`] holds, so that most events skip the lock.
static EXPECTING: AtomicUsize = AtomicUsize::new(0);

/// While the returned guard lives, library events that contain `text` are not logged.
///
/// Only other crates' events are dropped: the pipeline's own log lines always pass.
pub fn expect_noise(text: String) -> ExpectedNoise {
    let mut expected = EXPECTED.lock().unwrap_or_else(|e| e.into_inner());
    expected.push(text.clone());
    EXPECTING.store(expected.len(), Ordering::Release);
    ExpectedNoise(text)
}

/// Keeps one text from [`expect_noise`] expected until dropped.
#[must_use = "the noise is expected only while this guard lives"]
pub struct ExpectedNoise(String);

impl Drop for ExpectedNoise {
    fn drop(&mut self) {
        let mut expected = EXPECTED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = expected.iter().position(|t| *t == self.0) {
            expected.swap_remove(at);
        }
        EXPECTING.store(expected.len(), Ordering::Release);
    }
}

/// Whether an event from `target` whose fields read `fields` is expected noise.
fn is_expected(target: &str, fields: &str) -> bool {
    if target == env!("CARGO_CRATE_NAME") || target.starts_with(concat!(env!("CARGO_CRATE_NAME"), "::")) {
        return false;
    }
    let expected = EXPECTED.lock().unwrap_or_else(|e| e.into_inner());
    expected.iter().any(|text| fields.contains(text.as_str()))
}

/// The layer that drops expected noise before any output layer sees it.
struct Expected;

impl<S: Subscriber> Layer<S> for Expected {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        if EXPECTING.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut fields = FieldText(String::new());
        event.record(&mut fields);
        !is_expected(event.metadata().target(), &fields.0)
    }
}

/// Every field of an event, as one string to search.
struct FieldText(String);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_expected_library_noise_is_dropped() {
        let fields = " error=AMQPError { message: \"NOT_FOUND - no queue 'wasmcdc.logs_test' in vhost '/'\" }";
        assert!(!is_expected("lapin::channel", fields), "nothing is expected yet");
        let guard = expect_noise("no queue 'wasmcdc.logs_test'".into());
        assert!(is_expected("lapin::channel", fields));
        assert!(
            !is_expected("wasmcdc::queue", fields),
            "the pipeline's own lines always pass"
        );
        assert!(
            !is_expected("lapin::channel", " error=\"NOT_FOUND - no queue 'other'\""),
            "another queue's absence is not expected"
        );
        drop(guard);
        assert!(
            !is_expected("lapin::channel", fields),
            "expected only while the guard lives"
        );
    }
}
