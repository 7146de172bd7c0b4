//! A TCP proxy between a wasmcdc process and a server, whose link the test
//! can degrade while connections are open:
//!
//! - black hole: it still accepts connections, but answers nothing and
//!   forwards nothing, neither on new connections nor on open ones. That is a
//!   server that hangs, as opposed to one that is down and refuses connections;
//! - answer delay: everything the server sends reaches the client that much later;
//! - down: open connections are closed and new ones closed at once, as when
//!   the server is stopped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How the proxy treats traffic right now.
#[derive(Clone, Copy, Debug, Default)]
struct Link {
    black_hole: bool,
    down: bool,
    answer_delay: Duration,
}

/// A proxy listening on 127.0.0.1; dropping it closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        Proxy::listen(Some(upstream.to_owned()), Link::default()).await
    }

    /// A proxy that is a black hole from the start, with nothing behind it.
    pub async fn black_hole() -> Proxy {
        let link = Link {
            black_hole: true,
            ..Link::default()
        };
        Proxy::listen(None, link).await
    }

    async fn listen(upstream: Option<String>, link: Link) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port on 127.0.0.1");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let (switch, watching) = watch::channel(link);
        let task = tokio::spawn(async move {
            // Owned here, so that aborting the accept loop ends every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(serve(client, upstream.clone(), watching.clone()));
                // Reap finished connections as we go.
                while connections.try_join_next().is_some() {}
            }
        });
        Proxy {
            addr,
            link: switch,
            task,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `host:port` to put into a URL in place of the server's.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Switches black-hole mode on or off; open connections freeze or resume.
    pub fn set_black_hole(&self, on: bool) {
        self.link.send_modify(|l| l.black_hole = on);
    }

    /// Switches down mode on or off: while on, every connection is closed as soon as it is made.
    pub fn set_down(&self, on: bool) {
        self.link.send_modify(|l| l.down = on);
    }

    /// Delays what the server sends by `delay` (zero: no delay), in order, on every connection.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.link.send_modify(|l| l.answer_delay = delay);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client connection.
async fn serve(mut client: TcpStream, upstream: Option<String>, link: watch::Receiver<Link>) {
    if link.borrow().down {
        return;
    }
    let hole = link.borrow().black_hole;
    let Some(upstream) = upstream.filter(|_| !hole) else {
        // Swallow whatever the client sends, so its writes never block, and say nothing.
        let mut sink = [0u8; 8192];
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        // The client gave up; nothing was ever answered.
        return;
    };
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, link.clone(), false);
    let down = pump(server_read, client_write, link, true);
    // Either side closing ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` to `to`: held back while the black hole is on, and by the
/// answer delay when `answers` (the server-to-client direction). It keeps
/// reading meanwhile, so that a peer closing its end still ends the
/// connection (and the server rolls back what that session held).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>, answers: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    // What was read and not yet written, with when it was read.
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    loop {
        let now = *link.borrow_and_update();
        if now.down {
            return;
        }
        let delay = if answers { now.answer_delay } else { Duration::ZERO };
        let due = held
            .front()
            .filter(|_| !now.black_hole)
            .map(|(read_at, _)| *read_at + delay);
        tokio::select! {
            biased;
            changed = link.changed() => if changed.is_err() {
                // The proxy is gone.
                return;
            },
            _ = sleep_until(due) => {
                let (_, data) = held.pop_front().expect("something is held when it is due");
                if to.write_all(&data).await.is_err() {
                    return;
                }
            }
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => held.push_back((Instant::now(), buf[..n].to_vec())),
            },
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
