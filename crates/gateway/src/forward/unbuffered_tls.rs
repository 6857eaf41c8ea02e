//! TLS to an instance over rustls's unbuffered API: the gateway's own buffers, records
//! decrypted where they were read.
//!
//! rustls's buffered connection (what `tokio-rustls` drives) reads the socket into a record
//! buffer that grows 4 KiB a read (each step a resize, zero-filled, and a reallocation
//! copying what it holds), shrinks back to 4 KiB whenever it empties, and moves each decrypted
//! record into a queue before the reader copies it out: for a 16 KiB answer about a hundred
//! kilobytes of memory traffic and several large allocations, which `bench/mtls.sh` measured as
//! most of what mutual TLS added to the gateway's CPU time a request (the cipher itself is
//! about 2 us of it). The unbuffered API leaves the buffers to the caller:
//!
//! - `incoming` holds ciphertext as it came off the socket: one read asks for room for two
//!   full records, so a 16 KiB answer is a system call or two; rustls decrypts each record in
//!   place there and hands out its plaintext, which goes straight into the reader's buffer
//!   (what does not fit waits in `plaintext`).
//! - `outgoing` holds records rustls encrypted or encoded for the instance until the socket
//!   takes them; a write encrypts straight into it.
//!
//! Everything TLS itself decides stays rustls's: the handshake, verifying the instance's
//! certificate, alerts, post-handshake messages (session tickets, key updates, including
//! renewing keys before their confidentiality limit), and `close_notify`. The state machine
//! is turned one step at a time by [`UnbufferedTls::turn`]; a step that produced bytes for
//! the instance (a handshake flight, an answer to a key update) queues them in `outgoing`,
//! which is written before the connection waits to read (a peer may be waiting for them).
//!
//! The buffers live only while they hold bytes: [`UnbufferedTls::relax`], when the
//! connection goes back to its pool, gives up whatever is empty, so an idle pooled connection
//! holds rustls's connection state and nothing else. The incoming buffer (two records' room,
//! the one large allocation) goes to a small stack of spare buffers of the worker's thread,
//! where the next connection needing one takes it: a request over a pooled connection then
//! allocates and frees no large block, which would otherwise come and go once a request, and
//! with them, now and then, the allocator returning memory to the kernel only to fault it back
//! in. The outgoing buffer does the same through a second stack: a request's records are
//! encrypted into a buffer the connection took from it and, once the socket has them and the
//! connection goes idle, gave back.
//!
//! A read does not step the state machine when there is nothing to step it over: once a step
//! found the connection in its traffic state with every incoming byte consumed, another over an
//! empty buffer would only say so again, so until bytes arrive a read goes straight to the
//! socket (`settled`). A request then turns the state machine twice (its write, its answer's
//! records) rather than four times.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::thread::LocalKey;

use rustls::client::UnbufferedClientConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest TLS 1.3 record on the wire: a 5-byte header and at most 2^14 + 256 bytes of
/// encrypted content.
const MAX_RECORD: usize = 5 + (1 << 14) + 256;

/// The room one read from the socket gets: two full records.
const READ_ROOM: usize = 2 * MAX_RECORD;

/// Below this much spare room, the incoming buffer grows before the next read.
const MIN_ROOM: usize = 4096;

/// The most plaintext one write encrypts: four full records.
const MAX_WRITE: usize = 4 << 14;

/// Ciphertext held for the instance beyond which a write waits for the socket to take it.
const OUTGOING_LIMIT: usize = 64 * 1024;

/// The most spare buffers of each kind a thread keeps (incoming: about 1.2 MiB).
const SPARE_BUFFERS: usize = 32;

/// The largest outgoing buffer kept for another connection; a larger one (a big request body
/// was encrypted into it) is freed.
const SPARE_OUTGOING_MAX: usize = 16 * 1024;

thread_local! {
    /// Empty incoming buffers of [`READ_ROOM`], given up by connections going idle on this
    /// thread and taken by the next connection that reads (see the module's comment).
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Empty outgoing buffers of at most [`SPARE_OUTGOING_MAX`], the same way.
    static SPARE_OUTGOING: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for [`READ_ROOM`] bytes, a spare one when the thread has one.
fn take_buffer() -> Vec<u8> {
    SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(READ_ROOM))
}

/// Keeps `buffer` (emptied) for the thread's next reader, unless enough are kept already.
fn give_back(buffer: Vec<u8>) {
    if buffer.capacity() >= READ_ROOM {
        keep_spare(&SPARE, buffer);
    }
}

/// Pushes `buffer`, emptied, onto one of the thread's spare stacks, unless it is full.
fn keep_spare(stack: &'static LocalKey<RefCell<Vec<Vec<u8>>>>, mut buffer: Vec<u8>) {
    buffer.clear();
    stack.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buffer);
        }
    });
}

/// An empty outgoing buffer: a spare one when the thread has one (with no capacity if not:
/// the first encryption sizes it).
fn take_outgoing() -> Vec<u8> {
    SPARE_OUTGOING
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_default()
}

/// Keeps an outgoing buffer (emptied) for the thread's next writer, unless it is large or
/// enough are kept already.
fn give_back_outgoing(buffer: Vec<u8>) {
    if buffer.capacity() > 0 && buffer.capacity() <= SPARE_OUTGOING_MAX {
        keep_spare(&SPARE_OUTGOING, buffer);
    }
}

/// What a step of the state machine is asked to do with what it finds.
enum Intent<'a, 'b> {
    /// Finish the handshake.
    Handshake,
    /// Deliver plaintext into this buffer (what does not fit is kept).
    Read(&'a mut ReadBuf<'b>),
    /// Encrypt these bytes for the instance.
    Write(&'a [u8]),
    /// Queue `close_notify`.
    Close,
}

/// What a step did.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// Something was handled (plaintext kept, handshake bytes queued): step again.
    Again,
    /// Plaintext was delivered (or kept, when the intent was not to read).
    Delivered,
    /// Nothing more happens without more bytes from the instance.
    NeedsRead,
    /// The handshake is complete and nothing else is pending.
    Established,
    /// The intent to write or close was carried out; for a write, this many bytes taken.
    Written(usize),
    /// The instance sent `close_notify`: no more plaintext comes.
    PeerClosed,
    /// Both sides have sent `close_notify`.
    Closed,
}

/// A mutually authenticated TLS 1.3 connection to an instance (see the module's comment).
pub struct UnbufferedTls {
    tcp: TcpStream,
    conn: UnbufferedClientConnection,
    /// Ciphertext read from the socket and not yet consumed by rustls, from the start.
    incoming: Vec<u8>,
    /// Decrypted bytes a read had no room for: `plaintext[taken..]`.
    plaintext: Vec<u8>,
    taken: usize,
    /// Bytes for the instance not yet written: `outgoing[sent..]`.
    outgoing: Vec<u8>,
    sent: usize,
    /// A vectored write's slices, gathered into one run of records.
    gathered: Vec<u8>,
    /// No more plaintext will come: `close_notify` or the end of the TCP stream.
    read_done: bool,
    /// `close_notify` is queued.
    closing: bool,
    /// The last step found the traffic state with `incoming` empty: until bytes arrive, a
    /// step would find the same (see the module's comment).
    settled: bool,
    /// Steps taken (for tests of how many a request needs).
    #[cfg(test)]
    turns: usize,
}

impl std::fmt::Debug for UnbufferedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnbufferedTls")
            .field("incoming", &self.incoming.len())
            .field("plaintext", &(self.plaintext.len() - self.taken))
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .finish()
    }
}

/// A TLS failure as an I/O error that still says it is rustls's (see `is_tls_error`).
fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl UnbufferedTls {
    /// Runs the handshake with the instance at the other end of `tcp`.
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        let mut tls = Self {
            tcp,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            taken: 0,
            outgoing: Vec::new(),
            sent: 0,
            gathered: Vec::new(),
            read_done: false,
            closing: false,
            settled: false,
            #[cfg(test)]
            turns: 0,
        };
        std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
        Ok(tls)
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether bytes from the instance wait, read and not yet handed on.
    pub fn holds_unread(&self) -> bool {
        !self.incoming.is_empty() || self.taken < self.plaintext.len()
    }

    /// Frees the buffers that hold nothing (see the module's comment).
    pub fn relax(&mut self) {
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            give_back(std::mem::take(&mut self.incoming));
        }
        if self.taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.taken = 0;
        }
        if self.sent == self.outgoing.len() {
            give_back_outgoing(std::mem::take(&mut self.outgoing));
            self.sent = 0;
        }
        self.gathered = Vec::new();
    }

    /// The capacity the buffers hold (for tests of what an idle connection keeps).
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.incoming.capacity()
            + self.plaintext.capacity()
            + self.outgoing.capacity()
            + self.gathered.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.turn(Intent::Handshake)? {
                Turn::Again | Turn::Delivered => {}
                Turn::Established | Turn::Written(_) => {
                    // The client's last flight (its certificate and Finished) goes out now.
                    ready!(self.poll_send(cx))?;
                    return Poll::Ready(Ok(()));
                }
                Turn::NeedsRead => {
                    ready!(self.poll_send(cx))?;
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the instance closed the connection during the TLS handshake",
                        )));
                    }
                }
                Turn::PeerClosed | Turn::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the instance closed TLS during the handshake",
                    )));
                }
            }
        }
    }

    /// Turns rustls's state machine one step over the ciphertext held, doing what `intent`
    /// asks where the state allows it.
    fn turn(&mut self, intent: Intent<'_, '_>) -> io::Result<Turn> {
        #[cfg(test)]
        {
            self.turns += 1;
        }
        let Self {
            conn,
            incoming,
            plaintext,
            outgoing,
            settled,
            ..
        } = self;
        let status = conn.process_tls_records(incoming);
        let mut discard = status.discard;
        let state = status.state.map_err(tls_error)?;
        let traffic = matches!(state, ConnectionState::WriteTraffic(_));
        if outgoing.capacity() == 0
            && matches!(
                state,
                ConnectionState::WriteTraffic(_) | ConnectionState::EncodeTlsData(_)
            )
        {
            *outgoing = take_outgoing();
        }
        let turn = match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                let mut out = match intent {
                    Intent::Read(out) => Some(out),
                    _ => None,
                };
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    let mut payload = record.payload;
                    if let Some(out) = out.as_mut() {
                        let n = payload.len().min(out.remaining());
                        out.put_slice(&payload[..n]);
                        payload = &payload[n..];
                    }
                    plaintext.extend_from_slice(payload);
                }
                Turn::Delivered
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                let start = outgoing.len();
                let mut room = 1024;
                loop {
                    outgoing.resize(start + room, 0);
                    match encode.encode(&mut outgoing[start..]) {
                        Ok(n) => {
                            outgoing.truncate(start + n);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => room = required_size,
                        Err(error) => {
                            outgoing.truncate(start);
                            return Err(io::Error::other(error));
                        }
                    }
                }
                Turn::Again
            }
            // The bytes are already in `outgoing`, ahead of anything queued later; they are
            // written before the connection next waits to read.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                Turn::Again
            }
            ConnectionState::WriteTraffic(mut traffic) => match intent {
                Intent::Write(data) => {
                    let start = outgoing.len();
                    let mut room = data.len() + data.len().div_ceil(1 << 14).max(1) * 64;
                    loop {
                        outgoing.resize(start + room, 0);
                        match traffic.encrypt(data, &mut outgoing[start..]) {
                            Ok(n) => {
                                outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => room = required_size,
                            Err(error) => {
                                outgoing.truncate(start);
                                return Err(io::Error::other(error));
                            }
                        }
                    }
                    Turn::Written(data.len())
                }
                Intent::Close => {
                    let start = outgoing.len();
                    outgoing.resize(start + 64, 0);
                    match traffic.queue_close_notify(&mut outgoing[start..]) {
                        Ok(n) => outgoing.truncate(start + n),
                        Err(error) => {
                            outgoing.truncate(start);
                            return Err(io::Error::other(error));
                        }
                    }
                    Turn::Written(0)
                }
                Intent::Handshake => Turn::Established,
                Intent::Read(_) => Turn::NeedsRead,
            },
            ConnectionState::BlockedHandshake => Turn::NeedsRead,
            ConnectionState::PeerClosed => Turn::PeerClosed,
            ConnectionState::Closed => Turn::Closed,
            other => {
                return Err(io::Error::other(format!(
                    "unexpected TLS state for a client: {other:?}"
                )))
            }
        };
        incoming.drain(..discard);
        *settled = traffic && incoming.is_empty();
        Ok(turn)
    }

    /// Reads what the socket has into `incoming`. `Ok(0)`: the instance closed TCP.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.capacity() == 0 {
            self.incoming = take_buffer();
        } else if self.incoming.capacity() - self.incoming.len() < MIN_ROOM {
            self.incoming.reserve(READ_ROOM);
        }
        let mut buf = ReadBuf::uninit(self.incoming.spare_capacity_mut());
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        let read = buf.filled().len();
        // SAFETY: `poll_read` initialised the first `read` bytes of the spare capacity.
        unsafe { self.incoming.set_len(self.incoming.len() + read) };
        if read > 0 {
            self.settled = false;
        }
        Poll::Ready(Ok(read))
    }

    /// Writes what `outgoing` holds until it is empty or the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypts `data` (at most [`MAX_WRITE`] of it) into `outgoing` and starts sending it.
    fn poll_encrypt(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.outgoing.len() - self.sent >= OUTGOING_LIMIT {
            ready!(self.poll_send(cx))?;
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        loop {
            match self.turn(Intent::Write(data))? {
                Turn::Written(n) => {
                    // Taken: the records are queued. Whatever the socket does not take now
                    // goes with the next write or flush.
                    if let Poll::Ready(Err(error)) = self.poll_send(cx) {
                        return Poll::Ready(Err(error));
                    }
                    return Poll::Ready(Ok(n));
                }
                Turn::Again | Turn::Delivered | Turn::PeerClosed => {}
                Turn::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Turn::NeedsRead | Turn::Established => {
                    return Poll::Ready(Err(io::Error::other(
                        "a write on a TLS connection whose handshake is not complete",
                    )))
                }
            }
        }
    }
}

/// A connection closed or dropped by its pool leaves its incoming buffer to the thread's next
/// reader too.
impl Drop for UnbufferedTls {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.incoming));
    }
}

/// How many spare incoming buffers this thread holds (for tests).
#[cfg(test)]
fn spare_buffers() -> usize {
    SPARE.with(|spare| spare.borrow().len())
}

/// How many spare outgoing buffers this thread holds (for tests).
#[cfg(test)]
fn spare_outgoing() -> usize {
    SPARE_OUTGOING.with(|spare| spare.borrow().len())
}

impl AsyncRead for UnbufferedTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.plaintext.len() {
            let n = buf.remaining().min(this.plaintext.len() - this.taken);
            buf.put_slice(&this.plaintext[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.plaintext.len() {
                this.plaintext.clear();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.read_done || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let before = buf.filled().len();
            let turn = if this.settled {
                Turn::NeedsRead
            } else {
                this.turn(Intent::Read(&mut *buf))?
            };
            match turn {
                Turn::Delivered if buf.filled().len() > before => return Poll::Ready(Ok(())),
                Turn::Delivered | Turn::Again | Turn::Written(_) | Turn::Established => {}
                Turn::NeedsRead => {
                    // What rustls queued for the instance (an answer to its key update) goes
                    // before waiting on it; a failing write shows on the next write.
                    let _ = this.poll_send(cx);
                    if ready!(this.poll_fill(cx))? == 0 {
                        this.read_done = true;
                        if !this.incoming.is_empty() {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the instance closed the connection inside a TLS record",
                            )));
                        }
                        return Poll::Ready(Ok(()));
                    }
                }
                Turn::PeerClosed | Turn::Closed => {
                    this.read_done = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl AsyncWrite for UnbufferedTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_encrypt(cx, buf)
    }

    /// The slices become one run of records rather than a record each (a request's head and
    /// its body in one record, not two).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut gathered = std::mem::take(&mut this.gathered);
        gathered.clear();
        for slice in bufs {
            let room = MAX_WRITE - gathered.len();
            gathered.extend_from_slice(&slice[..slice.len().min(room)]);
            if gathered.len() == MAX_WRITE {
                break;
            }
        }
        let written = this.poll_encrypt(cx, &gathered);
        this.gathered = gathered;
        written
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    /// `close_notify`, then the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.closing {
            match this.turn(Intent::Close)? {
                Turn::Written(_) | Turn::Closed => this.closing = true,
                Turn::Again | Turn::Delivered | Turn::PeerClosed => {}
                Turn::NeedsRead | Turn::Established => {
                    return Poll::Ready(Err(io::Error::other(
                        "a shutdown on a TLS connection whose handshake is not complete",
                    )))
                }
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
