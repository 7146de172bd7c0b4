//! A plain HTTP/1.1 GET, enough to read a wasmcdc process's metrics, probes and status page.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A response: its status code and body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Polls `url`'s `/readyz` until its status is `want`; returns its body.
pub async fn wait_ready(url: &str, running: &mut super::binary::Running, want: u16, limit: Duration) -> String {
    let deadline = super::Deadline::new(format!("{url}/readyz to answer {want}"), limit);
    loop {
        running.assert_alive();
        let seen = get(&format!("{url}/readyz")).await;
        if let Some(r) = &seen
            && r.status == want
        {
            return r.body.clone();
        }
        deadline.tick(&format!("{seen:?}\n{}", running.log_tail())).await;
    }
}

/// GETs `url` (`http://HOST:PORT/PATH`); `None` when it cannot be read within 10 s.
pub async fn get(url: &str) -> Option<Response> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let read = async {
        let mut stream = TcpStream::connect(host).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        parse(&String::from_utf8_lossy(&raw))
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.ok().flatten()
}

fn parse(raw: &str) -> Option<Response> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Some(Response { status, body })
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// The sum of every sample of `metric` in Prometheus text whose labels include all of `labels` (`name="value"`).
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            (name == metric && labels.iter().all(|want| rest.contains(want))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
