//! The attach protocol between a client (`run`, `start -a`, `attach`) and a
//! container's supervisor, and the client side of it.
//!
//! A stream socket carries frames `[kind u8][len u32 big-endian][payload]`:
//!
//! | kind | direction | payload |
//! |------|-----------|---------|
//! | `STDIN` | client -> supervisor | bytes for the container's stdin / terminal |
//! | `STDIN_EOF` | client -> supervisor | none: close the container's stdin |
//! | `RESIZE` | client -> supervisor | rows u16, cols u16 (terminal size) |
//! | `SIGNAL` | client -> supervisor | signal number i32, for the container's init |
//! | `STDOUT`/`STDERR` | supervisor -> client | output bytes |
//! | `STARTED` | supervisor -> client | none: the container runs |
//! | `EXIT` | supervisor -> client | exit status i32; the supervisor is done (and `--rm` removal too) |
//! | `ERROR` | supervisor -> client | status i32 + message: the start failed |
//!
//! The first client gets one end of a socket pair at the supervisor's birth,
//! so it sees all output from the first byte; later clients connect to
//! `attach.sock` in the container directory.
//!
//! On a terminal the client switches to raw mode, forwards window size
//! changes, and watches stdin for the detach keys (default ctrl-p ctrl-q):
//! detaching closes the connection and leaves the container running.

use anyhow::{bail, Context as _, Result};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;

pub const STDIN: u8 = 0;
pub const STDIN_EOF: u8 = 1;
pub const RESIZE: u8 = 2;
pub const SIGNAL: u8 = 3;
pub const STDOUT: u8 = 10;
pub const STDERR: u8 = 11;
pub const STARTED: u8 = 12;
pub const EXIT: u8 = 13;
pub const ERROR: u8 = 14;

/// Largest payload accepted (a sanity bound, not a protocol limit in practice).
const MAX_FRAME: usize = 1 << 20;

pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "attach frame too large"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// Incremental frame parser for the supervisor's non-blocking reads.
#[derive(Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
    /// The next complete frame, if any; `Err` on a corrupt stream.
    pub fn next_frame(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "attach frame too large"));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((kind, payload)))
    }
}

/// The payload of an `ERROR` frame.
pub fn error_payload(code: i32, message: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(message.as_bytes());
    p
}

fn i32_of(p: &[u8]) -> i32 {
    p.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(-1)
}

/// `--detach-keys`: comma-separated `ctrl-<x>` or single characters; empty
/// disables detaching. Default ctrl-p,ctrl-q.
pub fn parse_detach_keys(spec: Option<&str>) -> Result<Vec<u8>> {
    let spec = spec.unwrap_or("ctrl-p,ctrl-q");
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for key in spec.split(',') {
        if let Some(c) = key.strip_prefix("ctrl-") {
            let b = match c.as_bytes() {
                [b @ b'a'..=b'z'] => b - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => bail!("Unknown character: '{key}'"),
            };
            out.push(b);
        } else if key.len() == 1 {
            out.push(key.as_bytes()[0]);
        } else {
            bail!("Unknown character: '{key}'");
        }
    }
    Ok(out)
}

pub struct ClientOptions {
    /// Forward our stdin to the container.
    pub stdin: bool,
    pub tty: bool,
    pub detach_keys: Vec<u8>,
    /// Forward SIGINT, SIGTERM, ... to the container.
    pub sig_proxy: bool,
    /// Instead, end the container (SIGKILL) on SIGINT, SIGTERM, SIGHUP or
    /// SIGQUIT, and remember the signal ([`interrupted_by`]): a build step,
    /// whose init would ignore them, is cancelled as Docker cancels it.
    pub kill_on_interrupt: bool,
}

/// The signal that made an attached client with `kill_on_interrupt` end
/// its container, if one did (0: none).
static INTERRUPTED_BY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// See [`ClientOptions::kill_on_interrupt`].
pub fn interrupted_by() -> Option<i32> {
    Some(INTERRUPTED_BY.load(std::sync::atomic::Ordering::Relaxed)).filter(|s| *s != 0)
}

/// How an attached session ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(i32),
    StartFailed {
        code: i32,
        message: String,
    },
    Detached,
    /// The supervisor went away without saying why.
    Lost,
}

/// Signals a client forwards to the container: as with Docker, every one a process can catch,
/// real-time ones included, but SIGCHLD, SIGPIPE and SIGURG, which concern the client itself.
/// SIGWINCH is handled apart (a resize). glibc keeps the first real-time signals (below
/// `SIGRTMIN()`) for its own threads; they stay alone.
fn proxied_signals() -> impl Iterator<Item = libc::c_int> {
    let classic = (1..32).filter(|s| {
        !matches!(*s, libc::SIGKILL | libc::SIGSTOP | libc::SIGCHLD | libc::SIGPIPE | libc::SIGURG | libc::SIGWINCH)
    });
    classic.chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
}

/// A set of signal numbers, real-time ones included (which `nix`'s `Signal` cannot name).
#[derive(Clone, Copy)]
struct SignalSet(libc::sigset_t);

impl SignalSet {
    fn new(signals: impl IntoIterator<Item = libc::c_int>) -> SignalSet {
        // SAFETY: sigemptyset/sigaddset initialise and fill the set; bad numbers are refused
        // (EINVAL) and left out.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in signals {
                libc::sigaddset(&mut set, s);
            }
            SignalSet(set)
        }
    }

    /// Blocks the set in the calling thread (and the threads it starts
    /// later) until the guard is dropped. The mask must not outlive the
    /// attachment: processes this thread starts afterwards (the next build
    /// step's supervisor, and its pasta) would inherit it, and a pasta
    /// blocking SIGTERM is never stopped.
    fn block(&self) -> io::Result<MaskGuard> {
        // SAFETY: sigset_t is plain data, filled by pthread_sigmask below.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid sets.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, &mut old) };
        if r == 0 {
            Ok(MaskGuard(old))
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }

    /// Waits for one of the (blocked) signals of the set.
    fn wait(&self) -> io::Result<libc::c_int> {
        let mut sig = 0;
        // SAFETY: valid set and output pointer.
        let r = unsafe { libc::sigwait(&self.0, &mut sig) };
        if r == 0 {
            Ok(sig)
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }
}

/// The calling thread's signal mask from before [`SignalSet::block`],
/// restored when dropped.
struct MaskGuard(libc::sigset_t);

impl Drop for MaskGuard {
    fn drop(&mut self) {
        // SAFETY: a valid set taken from pthread_sigmask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Puts the terminal on fd 0 in raw mode until dropped.
struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    fn enable() -> RawMode {
        use nix::sys::termios::*;
        let stdin = io::stdin();
        let Ok(saved) = tcgetattr(stdin.as_fd()) else { return RawMode { saved: None } };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        // Keep output post-processing off like Docker; the container's
        // terminal does its own.
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, s);
        }
    }
}

/// The window size of the terminal on `fd`.
pub fn window_size(fd: i32) -> Option<(u16, u16)> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointed-to struct.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

fn resize_payload(rows: u16, cols: u16) -> Vec<u8> {
    let mut p = rows.to_be_bytes().to_vec();
    p.extend_from_slice(&cols.to_be_bytes());
    p
}

pub fn parse_resize(p: &[u8]) -> Option<(u16, u16)> {
    (p.len() >= 4).then(|| (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

/// Relays our stdio over `stream` until the container exits, the start
/// fails, or the user detaches.
pub fn run_client(stream: UnixStream, opts: ClientOptions) -> Result<Outcome> {
    // A supervisor that went away must show up as an error on the socket,
    // not kill us before we can report the container's status.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // Block the proxied signals and SIGWINCH before starting threads, so
    // only the signal thread receives them (via sigwait).
    let stdin_tty = opts.tty && nix::unistd::isatty(io::stdin().as_fd()).unwrap_or(false);
    let proxied = (opts.sig_proxy || opts.kill_on_interrupt).then(proxied_signals).into_iter().flatten();
    let kill_on_interrupt = opts.kill_on_interrupt;
    let winch = stdin_tty.then_some(libc::SIGWINCH);
    let any_signal = opts.sig_proxy || opts.kill_on_interrupt || stdin_tty;
    let set = SignalSet::new(proxied.chain(winch));
    let _mask = set.block().context("blocking signals")?;

    let _raw = if stdin_tty && opts.stdin { Some(RawMode::enable()) } else { None };
    let writer = stream.try_clone().context("cloning the attach socket")?;
    let detached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    if stdin_tty {
        if let Some((r, c)) = window_size(0) {
            let _ = write_frame(&mut &writer, RESIZE, &resize_payload(r, c));
        }
    }
    // Signals -> SIGNAL / RESIZE frames.
    if any_signal {
        let w = writer.try_clone()?;
        std::thread::spawn(move || loop {
            let Ok(sig) = set.wait() else { return };
            let r = if sig == libc::SIGWINCH {
                match window_size(0) {
                    Some((r, c)) => write_frame(&mut &w, RESIZE, &resize_payload(r, c)),
                    None => Ok(()),
                }
            } else if kill_on_interrupt {
                if !matches!(sig, libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT) {
                    continue;
                }
                INTERRUPTED_BY.store(sig, std::sync::atomic::Ordering::Relaxed);
                write_frame(&mut &w, SIGNAL, &libc::SIGKILL.to_be_bytes())
            } else {
                write_frame(&mut &w, SIGNAL, &sig.to_be_bytes())
            };
            if r.is_err() {
                return;
            }
        });
    }
    // stdin -> STDIN frames, watching for the detach keys on a terminal.
    if opts.stdin {
        let w = writer.try_clone()?;
        let keys = if stdin_tty { opts.detach_keys.clone() } else { Vec::new() };
        let detached = detached.clone();
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = [0u8; 8192];
            let mut matched = 0usize;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = write_frame(&mut &w, STDIN_EOF, &[]);
                        return;
                    }
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if !keys.is_empty() && b == keys[matched] {
                        matched += 1;
                        if matched == keys.len() {
                            let _ = write_frame(&mut &w, STDIN, &out);
                            detached.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = w.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        continue;
                    }
                    // A partial match that breaks off is ordinary input.
                    out.extend_from_slice(&keys[..matched]);
                    matched = 0;
                    if !keys.is_empty() && b == keys[0] {
                        matched = 1;
                        continue;
                    }
                    out.push(b);
                }
                if !out.is_empty() && write_frame(&mut &w, STDIN, &out).is_err() {
                    return;
                }
            }
        });
    }
    // Output and status frames.
    let mut reader = io::BufReader::new(stream);
    let mut stdout = io::stdout();
    let mut stderr = io::stderr();
    loop {
        let frame = match read_frame(&mut reader) {
            Ok(f) => f,
            Err(_) if detached.load(std::sync::atomic::Ordering::SeqCst) => return Ok(Outcome::Detached),
            Err(e) => return Err(e).context("reading from the container's supervisor"),
        };
        let Some((kind, payload)) = frame else {
            return Ok(if detached.load(std::sync::atomic::Ordering::SeqCst) {
                Outcome::Detached
            } else {
                Outcome::Lost
            });
        };
        match kind {
            STDOUT => {
                let _ = stdout.write_all(&payload).and_then(|_| stdout.flush());
            }
            STDERR => {
                let _ = stderr.write_all(&payload).and_then(|_| stderr.flush());
            }
            STARTED => {}
            EXIT => return Ok(Outcome::Exited(i32_of(&payload))),
            ERROR => {
                let message = String::from_utf8_lossy(payload.get(4..).unwrap_or_default()).into_owned();
                return Ok(Outcome::StartFailed { code: i32_of(&payload), message });
            }
            _ => {}
        }
    }
}

/// Connects to a running container's attach socket. The path may be longer
/// than a socket address allows, so it is reached through an O_PATH fd of
/// the directory.
pub fn connect(dir: &std::path::Path) -> Result<UnixStream> {
    let d = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let path = format!("/proc/self/fd/{}/attach.sock", d.as_raw_fd());
    UnixStream::connect(&path).with_context(|| format!("connecting to the supervisor of {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, STDOUT, b"hello").unwrap();
        write_frame(&mut buf, EXIT, &3i32.to_be_bytes()).unwrap();
        let mut fb = FrameBuf::default();
        fb.push(&buf[..7]);
        assert!(fb.next_frame().unwrap().is_none());
        fb.push(&buf[7..]);
        assert_eq!(fb.next_frame().unwrap(), Some((STDOUT, b"hello".to_vec())));
        let (k, p) = fb.next_frame().unwrap().unwrap();
        assert_eq!((k, i32_of(&p)), (EXIT, 3));
    }

    #[test]
    fn every_catchable_signal_is_proxied() {
        let all: Vec<i32> = proxied_signals().collect();
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGALRM, libc::SIGUSR1, libc::SIGTSTP, libc::SIGCONT]
        {
            assert!(all.contains(&s), "{s} not proxied");
        }
        for s in [libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD, libc::SIGPIPE, libc::SIGURG, libc::SIGWINCH, 32, 33] {
            assert!(!all.contains(&s), "{s} proxied");
        }
        assert!(all.contains(&libc::SIGRTMIN()) && all.contains(&libc::SIGRTMAX()));
    }

    #[test]
    fn detach_keys() {
        assert_eq!(parse_detach_keys(None).unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys(Some("ctrl-a,x")).unwrap(), vec![1, b'x']);
        assert!(parse_detach_keys(Some("ctrl-1")).is_err());
    }
}
