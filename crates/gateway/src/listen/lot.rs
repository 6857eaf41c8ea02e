//! The parking lot: where one worker's idle keep-alive connections wait, with no task each.
//!
//! A parked connection used to wait in a small task of its own: its future, the task's header,
//! the socket's registration with tokio's reactor and the client's details came to about 1.4 KB
//! on the heap, and, worse, those small allocations were scattered among the pages that the
//! connection's session had just freed, so glibc could give few of those pages back. Ten
//! thousand idle clients held tens of megabytes that way.
//!
//! nginx keeps an idle keep-alive connection as a file descriptor in its event loop and a small
//! struct. The lot does the same: a parked socket leaves tokio's reactor and joins an epoll set
//! of the lot's own, and what the gateway keeps for it is one [`Spot`] (the socket, the
//! client's address, its place under the connection limit, when it parked: under 100 bytes, in
//! one table, nothing else on the heap). One task per worker watches the whole set through the
//! lot's epoll descriptor, which is itself registered with tokio (an epoll descriptor is
//! readable while any socket in its set is ready). When a parked client sends again, its socket
//! goes back to tokio and a new session starts on it; when it closes, or stays silent past the
//! keep-alive timeout, the socket is closed.
//!
//! A client that connects and sends nothing for `park_after` waits here too, until its header
//! deadline: ten thousand silent connections (a slowloris variant) cost a table, not ten
//! thousand tasks.
//!
//! Every socket is added with `EPOLLONESHOT`: once it has reported, the lot's set ignores it
//! until it parks again (`EPOLL_CTL_MOD`), so a woken connection costs no system call to leave
//! the set. The kernel drops the entry when the socket is closed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::listen::limits::Limits;
use crate::proxy::Proxy;

/// Events read from the lot's set per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;
/// How often parked connections are checked against their deadlines, at least: a parked
/// connection may outstay its deadline by up to this much.
const SWEEP_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// One parked connection.
struct Spot {
    /// Out of tokio's reactor while parked (non-blocking still).
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// Its place under the worker's connection limit, held while parked.
    permit: OwnedSemaphorePermit,
    /// Closed if still silent then: the keep-alive timeout after parking, or for a connection
    /// that has not sent its first request yet, the header timeout after it was accepted.
    until: Instant,
    fresh: bool,
}

/// One worker's parking lot for plain-TCP HTTP/1.1 connections.
///
/// Used only on its worker's thread (each worker's runtime is single-threaded): the mutex is
/// there for the type system and is never contended, and nothing parks or closes between an
/// `epoll_wait` and the removal of what it reported, so an event cannot name a socket that was
/// closed and whose descriptor number was reused (closing a socket also takes it out of the
/// set, with any event it had pending).
pub struct Lot {
    epoll: AsyncFd<OwnedFd>,
    spots: Mutex<Spots>,
    /// What a woken connection's new session needs.
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) stopped: watch::Receiver<bool>,
}

/// The parked connections, by socket.
#[derive(Default)]
struct Spots {
    by_fd: HashMap<RawFd, Spot>,
    /// The lot has stopped watching (the gateway is stopping): nothing parks any more.
    closed: bool,
}

/// A parked connection that has something to say: its socket is back with tokio.
pub struct Woken {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
    /// It had not sent its first request before it parked.
    pub fresh: bool,
    /// Its deadline in the lot (for a fresh connection, when its first request is due).
    pub until: Instant,
}

impl Lot {
    /// A lot for the current worker (must be called on its runtime).
    pub fn new(
        proxy: Arc<Proxy>,
        limits: Arc<Limits>,
        stopped: watch::Receiver<bool>,
    ) -> io::Result<Arc<Self>> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above: `fd` is ours alone.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` stays open, and is the same descriptor, until it is dropped
        // with the `AsyncFd`.
        let epoll =
            unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }
                .map_err(|error| io::Error::other(error.to_string()))?;
        Ok(Arc::new(Self {
            epoll,
            spots: Mutex::new(Spots::default()),
            proxy,
            limits,
            stopped,
        }))
    }

    /// Parks `stream` between requests: it leaves tokio's reactor and waits in the lot for up
    /// to the keep-alive timeout. On failure the connection is closed (dropped), which is what
    /// a client of an idle connection must always be ready for.
    pub fn park(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let until = after(self.limits.keepalive_timeout);
        self.park_until(stream, peer, permit, until, false);
    }

    /// Parks a connection that has not sent its first request yet; it is closed if it sends
    /// nothing by `until` (its header deadline).
    pub fn park_fresh(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        until: Instant,
    ) {
        self.park_until(stream, peer, permit, until, true);
    }

    fn park_until(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        until: Instant,
        fresh: bool,
    ) {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let fd = stream.as_raw_fd();
        let Ok(mut spots) = self.spots.lock() else {
            return;
        };
        if spots.closed {
            return; // stopping: an idle connection is simply closed
        }
        if let Err(error) = self.watch(fd) {
            tracing::debug!(%error, %peer, "could not park a connection; closing it");
            return;
        }
        let spot = Spot {
            stream,
            peer,
            permit,
            until,
            fresh,
        };
        if spots.by_fd.insert(fd, spot).is_none() {
            metrics::gauge!("gateway_connections_parked").increment(1.0);
        }
    }

    /// Adds `fd` to the lot's set, or re-arms it if it was parked here before.
    fn watch(&self, fd: RawFd) -> io::Result<()> {
        let interest = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
        let mut event = libc::epoll_event {
            events: interest,
            u64: fd as u64,
        };
        let epoll = self.epoll.get_ref().as_raw_fd();
        // SAFETY: `event` outlives the call; both descriptors are open.
        let added = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
        if added == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EEXIST) {
            return Err(error);
        }
        // SAFETY: as above.
        let modified = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, &mut event) };
        if modified == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Watches the lot until the gateway stops, handing each woken connection to `wake`.
    pub async fn run(self: Arc<Self>, wake: impl Fn(&Arc<Self>, Woken)) {
        let mut stopped = self.stopped.clone();
        let every = SWEEP_AT_MOST_EVERY
            .min(self.limits.keepalive_timeout)
            .min(self.limits.header_timeout)
            .max(Duration::from_millis(10));
        let mut sweep = tokio::time::interval(every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
        loop {
            tokio::select! {
                biased;
                _ = crate::listen::stop::stop_signal(&mut stopped) => break,
                _ = sweep.tick() => self.sweep(),
                ready = self.epoll.readable() => {
                    let Ok(mut guard) = ready else { break };
                    // Drains the set; the last, empty, wait clears the readiness.
                    while let Ok(waited) = guard.try_io(|epoll| wait(epoll.as_raw_fd(), &mut events)) {
                        if let Err(error) = waited {
                            tracing::warn!(%error, "waiting on parked connections failed");
                            guard.clear_ready();
                            break;
                        }
                        for event in &events {
                            if let Some(woken) = self.take(event) {
                                wake(&self, woken);
                            }
                        }
                    }
                }
            }
        }
        // Stopping: parked connections are idle, so they are simply closed.
        self.close_all();
    }

    /// The connection behind a reported event, if it is to be served; a closed one is
    /// dropped here.
    fn take(&self, event: &libc::epoll_event) -> Option<Woken> {
        let fd = event.u64 as RawFd;
        let spot = self.spots.lock().ok()?.by_fd.remove(&fd)?;
        metrics::gauge!("gateway_connections_parked").decrement(1.0);
        let flags = event.events as i32;
        if flags & (libc::EPOLLERR | libc::EPOLLHUP) != 0 {
            return None;
        }
        // The client closed its side: serve it only if it sent a request first.
        if flags & libc::EPOLLRDHUP != 0 && !has_data(&spot.stream) {
            return None;
        }
        let stream = TcpStream::from_std(spot.stream).ok()?;
        Some(Woken {
            stream,
            peer: spot.peer,
            permit: spot.permit,
            fresh: spot.fresh,
            until: spot.until,
        })
    }

    /// Closes the connections silent past their deadline.
    fn sweep(&self) {
        let Ok(mut spots) = self.spots.lock() else {
            return;
        };
        let before = spots.by_fd.len();
        let now = Instant::now();
        spots.by_fd.retain(|_, spot| now < spot.until);
        let closed = before - spots.by_fd.len();
        if closed > 0 {
            metrics::gauge!("gateway_connections_parked").decrement(closed as f64);
        }
    }

    fn close_all(&self) {
        if let Ok(mut spots) = self.spots.lock() {
            spots.closed = true;
            metrics::gauge!("gateway_connections_parked").decrement(spots.by_fd.len() as f64);
            spots.by_fd = HashMap::new();
        }
    }
}

/// Reads up to [`EVENTS_PER_WAIT`] events without blocking; "would block" when there are none.
fn wait(epoll: RawFd, events: &mut Vec<libc::epoll_event>) -> io::Result<()> {
    events.clear();
    // SAFETY: the kernel writes at most `capacity` events into the vector's spare room, and we
    // set the length to the count it reports.
    let count = unsafe {
        libc::epoll_wait(
            epoll,
            events.as_mut_ptr(),
            events.capacity() as libc::c_int,
            0,
        )
    };
    match count {
        0 => Err(io::ErrorKind::WouldBlock.into()),
        n if n < 0 => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(error)
            }
        }
        n => {
            // SAFETY: see above; `n` <= capacity.
            unsafe { events.set_len(n as usize) };
            Ok(())
        }
    }
}

/// Whether the client sent bytes not read yet (looked at, not taken: they are the next
/// session's).
fn has_data(stream: &std::net::TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.peek(&mut probe), Ok(n) if n > 0)
}

/// `duration` from now, or a time too far off to matter if that is past what a clock can say.
pub fn after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
