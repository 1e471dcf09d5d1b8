//! Networking: loopback for a new network namespace, and `pasta` (from the passt package) to
//! connect a private namespace to the host with published ports.
//!
//! pasta is started after the container process exists and before it runs anything. Without
//! `--foreground` pasta returns once the namespace is configured (our readiness signal) and keeps
//! running in the background; `--pid` tells us whom to stop when the container exits (pasta does
//! not notice on its own when it joined through a namespace fd).
//!
//! As root the target has a full capability set that pasta, which drops capabilities first, may
//! not ptrace-inspect, so `/proc/PID/ns/net` is refused; we open the namespace ourselves and hand
//! pasta the fd (`--netns /proc/self/fd/N`); it also needs `--runas 0` then, because as `nobody`
//! it may not join a namespace owned by the initial user namespace. In a user namespace pasta
//! joins by PID and drops to the caller's user as usual.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::RunnerError;
use crate::spec::{BridgeAttachment, PortForward, Protocol};
use crate::sys;

/// Find `pasta` in PATH.
pub(crate) fn find_pasta() -> Result<PathBuf, RunnerError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("pasta"))
        .find(|p| p.is_file())
        .ok_or_else(|| RunnerError::Network("pasta not found: install the passt package for --network private".into()))
}

/// A running pasta instance serving a container.
#[derive(Debug)]
pub struct Pasta {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
}

impl Pasta {
    /// pasta's pid (it runs in the background, not as our child).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Stop pasta (it would otherwise outlive the namespace).
    pub fn stop(&self) {
        match &self.pidfd {
            Some(fd) => {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGTERM);
            }
            // SAFETY: plain kill of the pid pasta wrote for us.
            None => unsafe {
                libc::kill(self.pid, libc::SIGTERM);
            },
        }
    }
}

fn port_spec(p: &PortForward) -> String {
    match &p.host_ip {
        Some(ip) => format!("{ip}/{}:{}", p.host_port, p.container_port),
        None => format!("{}:{}", p.host_port, p.container_port),
    }
}

/// Configure the network namespace of `pid` with pasta and forward `ports`.
pub(crate) fn start_pasta(
    pasta: &PathBuf,
    pid: libc::pid_t,
    container: BorrowedFd<'_>,
    userns: bool,
    ports: &[PortForward],
) -> Result<Pasta, RunnerError> {
    let dir = tempfile_dir()?;
    let pidfile = dir.join("pasta.pid");
    let mut cmd = Command::new(pasta);
    cmd.args(["--config-net", "--quiet", "-T", "none", "-U", "none"]);
    // One option per port: an address prefix applies to a whole option
    // (`127.0.0.1/8080:80,8081:81`), so ports of different addresses cannot share one.
    for (flag, protocol) in [("-t", Protocol::Tcp), ("-u", Protocol::Udp)] {
        let specs: Vec<String> = ports.iter().filter(|p| p.protocol == protocol).map(port_spec).collect();
        if specs.is_empty() {
            cmd.arg(flag).arg("none");
        }
        for spec in specs {
            cmd.arg(flag).arg(spec);
        }
    }
    cmd.arg("--pid").arg(&pidfile);
    // pasta becomes a long-lived daemon: it must not keep any of our fds (say, the pipe a
    // `strata run | cat` reads from) open, except the namespace fd it is told about.
    let mut keep: RawFd = -1;
    let nsfd;
    if userns {
        cmd.arg(pid.to_string());
    } else {
        let f = fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| RunnerError::Network(format!("open the container's network namespace: {e}")))?;
        keep = f.as_raw_fd();
        nsfd = f;
        cmd.args(["--runas", "0", "--netns", &format!("/proc/self/fd/{}", nsfd.as_raw_fd())]);
    }
    // SAFETY: only fcntl/close_range between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            crate::sys::unblock_all_signals()?;
            crate::sys::cloexec_from(3)?;
            if keep >= 0 && libc::fcntl(keep, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| RunnerError::Network(format!("run {}: {e}", pasta.display())));
    let read_pid = fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<libc::pid_t>().ok());
    let _ = fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        let msg: Vec<&str> = std::str::from_utf8(&out.stderr)
            .unwrap_or("")
            .lines()
            .filter(|l| !l.starts_with("Failed to send"))
            .collect();
        return Err(RunnerError::Network(format!("pasta failed ({}): {}", out.status, msg.join("; "))));
    }
    let pid = read_pid.ok_or_else(|| RunnerError::Network("pasta did not write its pid".into()))?;
    let pidfd = sys::pidfd_open(pid).ok();
    if let Some(fd) = &pidfd {
        watch(container, fd.as_fd());
    }
    Ok(Pasta { pid, pidfd })
}

/// Make sure pasta goes away with the container even when the caller never gets to `stop` it
/// (killed supervisor, leaked handle): pasta, joined through a namespace fd, does not notice
/// that the namespace is gone. A detached watcher process (double fork, so it is nobody's
/// child to reap) polls the container's pidfd and signals pasta's pidfd when it fires.
fn watch(container: BorrowedFd<'_>, pasta: BorrowedFd<'_>) {
    let (c, p) = (container.as_raw_fd(), pasta.as_raw_fd());
    // SAFETY: fork of a possibly multi-threaded process; the children only make raw syscalls
    // (no allocation, no locks) and leave with _exit.
    unsafe {
        let first = libc::fork();
        if first == 0 {
            if libc::fork() != 0 {
                libc::_exit(0);
            }
            libc::setsid();
            // Keep only the two pidfds (moved to 3 and 4) and /dev/null on 0, 1, 2.
            let c3 = libc::fcntl(c, libc::F_DUPFD_CLOEXEC, 10);
            let p3 = libc::fcntl(p, libc::F_DUPFD_CLOEXEC, 10);
            if c3 < 0 || p3 < 0 || libc::dup2(c3, 3) < 0 || libc::dup2(p3, 4) < 0 {
                libc::_exit(1);
            }
            sys::close_from(5);
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
            }
            let mut pfd = libc::pollfd { fd: 3, events: libc::POLLIN, revents: 0 };
            while libc::poll(&mut pfd, 1, -1) == -1 {}
            let null_info = std::ptr::null::<libc::siginfo_t>();
            libc::syscall(libc::SYS_pidfd_send_signal, 4, libc::SIGTERM, null_info, 0);
            libc::_exit(0);
        }
        if first > 0 {
            let mut st = 0;
            libc::waitpid(first, &mut st, 0);
        }
    }
}

fn tempfile_dir() -> Result<PathBuf, RunnerError> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        // SAFETY: getpid cannot fail.
        let d = base.join(format!("strata-pasta-{}-{i}", unsafe { libc::getpid() }));
        match fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RunnerError::io(format!("create {}", d.display()), e)),
        }
    }
    Err(RunnerError::Network("cannot create a temporary directory for pasta".into()))
}

/// Bring `lo` up in the current (new) network namespace.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: an ifreq for "lo" and SIOC[GS]IFFLAGS on a datagram socket we own.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock == -1 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut res = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if res == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            res = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(sock);
        if res == -1 {
            return Err(err);
        }
    }
    Ok(())
}

/// Connects the network namespace of `pid` to a bridge (see [`BridgeAttachment`]): the veth is
/// made in the bridge's namespace with its peer moved into the container's, then addressed and
/// brought up there. `ip` (iproute2) does the netlink work, run in each namespace in turn.
///
/// Also for a running container (`network connect`), by a caller with the capabilities above.
pub fn attach_bridge(pid: libc::pid_t, att: &BridgeAttachment) -> Result<(), RunnerError> {
    let BridgeAttachment { holder_pid, bridge, host_veth, interface, address } = att;
    // The veth of this container's previous run may outlive it briefly (the
    // kernel destroys it with the old network namespace, asynchronously): a
    // quick restart would find its name taken.
    // (Fails when there is none, which is the usual case.)
    let _ = ip_in(*holder_pid, &format!("link del {host_veth}\n"));
    ip_in(
        *holder_pid,
        &format!(
            "link add {host_veth} type veth peer name {interface} netns {pid}\n\
             link set {host_veth} master {bridge}\nlink set {host_veth} up\n"
        ),
    )?;
    // The MAC follows from the address (Docker's 02:42 scheme): a container
    // that comes back at the same address (a restart, or a new one with the
    // same `--ip`) keeps the MAC its peers' neighbour caches hold, so they
    // reach it at once rather than after those entries expire.
    let mac = match mac_for(address) {
        Some(mac) => format!("link set {interface} address {mac}\n"),
        None => String::new(),
    };
    ip_in(pid, &format!("{mac}addr add {address} dev {interface}\nlink set {interface} up\n"))
}

/// `02:42:` and the four bytes of the IPv4 address of `A.B.C.D/PREFIX`.
fn mac_for(address: &str) -> Option<String> {
    let ip: std::net::Ipv4Addr = address.split('/').next()?.parse().ok()?;
    let [a, b, c, d] = ip.octets();
    Some(format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}"))
}

/// Undoes [`attach_bridge`] for a running container: deleting the bridge's end of the veth
/// deletes the other end too.
pub fn detach_bridge(att: &BridgeAttachment) -> Result<(), RunnerError> {
    ip_in(att.holder_pid, &format!("link del {}\n", att.host_veth))
}

/// Runs `ip -batch -` with `commands` in the network namespace of `pid`.
fn ip_in(pid: libc::pid_t, commands: &str) -> Result<(), RunnerError> {
    use std::io::Write;
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| RunnerError::Network(format!("open the network namespace of {pid}: {e}")))?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("ip");
    cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: setns and close_range between fork and exec (raw syscalls).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == -1 {
                return Err(io::Error::last_os_error());
            }
            crate::sys::cloexec_from(3)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| RunnerError::Network(format!("run ip (install iproute2 for user-defined networks): {e}")))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(commands.as_bytes()).map_err(|e| RunnerError::Network(format!("write to ip: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| RunnerError::Network(format!("wait for ip: {e}")))?;
    drop(ns);
    if !out.status.success() {
        return Err(RunnerError::Network(format!(
            "connecting to the network's bridge: ip: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mac_follows_from_the_address() {
        assert_eq!(super::mac_for("10.89.1.5/24").as_deref(), Some("02:42:0a:59:01:05"));
        assert_eq!(super::mac_for("not an address"), None);
    }
}
