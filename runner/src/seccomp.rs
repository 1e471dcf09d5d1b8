//! Seccomp: the syscall filter a container's processes run under.
//!
//! A [`SeccompProfile`] says, per syscall (and optionally per argument
//! value), what happens: allowed, an errno, or the process killed. The CLI
//! builds one from Docker's JSON profile format or uses [`default_profile`];
//! the runner compiles it to BPF in the caller (seccompiler does the BPF;
//! it also knows the syscall numbers of this architecture) and the
//! container process installs it last before dropping its capabilities and
//! exec'ing, as runc does: with CAP_SYS_ADMIN still held, so that no
//! `no_new_privs` is forced on it (set-id programs keep working, as in
//! Docker, unless `--security-opt no-new-privileges` asks for it).
//!
//! One profile becomes several stacked filters: one for the allowed
//! syscalls (everything else gets the default action), then one per other
//! action for the syscalls that get it. The kernel runs every filter and
//! takes the action of highest precedence (kill, trap, errno, log, allow);
//! between two errnos, the filter installed last wins, so a specific
//! errno (`clone3` -> ENOSYS) beats the default one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::caps::Cap;
use crate::error::RunnerError;

/// What a syscall gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Trap,
    Log,
}

/// A comparison of one syscall argument (64-bit): `arg OP value`, or for
/// `MaskedEq`, `arg & mask == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgCondition {
    pub index: u8,
    pub op: CmpOp,
    pub value: u64,
    #[serde(default)]
    pub mask: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

/// Syscalls that get `action` when all of `args` hold (always, without args).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: Action,
    #[serde(default)]
    pub args: Vec<ArgCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProfile {
    pub default_action: Action,
    pub rules: Vec<SyscallRule>,
}

/// Namespace flags of clone/unshare: what an unprivileged container may not
/// create (a new user namespace needs no capability, and is where many
/// kernel exploits start).
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Docker's default policy (moby's `profiles/seccomp/default.json`),
/// written as what it refuses rather than as its allowlist of ~350
/// syscalls: the same syscalls end up refused (EPERM), each allowed again
/// where Docker allows it for a capability the container holds. One
/// addition: io_uring is refused, as containerd's default does (it bypasses
/// the syscall layer this filter sees). Syscalls newer than a given Docker
/// release are allowed here, where its allowlist would refuse them until
/// it names them.
pub fn default_profile(caps: &[Cap]) -> SeccompProfile {
    let has = |c: &str| caps.iter().any(|cap| Some(cap.name()) == c.strip_prefix("CAP_"));
    let eperm = Action::Errno(libc::EPERM as u32);
    // (Syscalls only 32-bit architectures have, such as stime and umount,
    // are left out: each name this architecture lacks costs a compile.)
    // Refused whatever the capabilities.
    let mut denied: Vec<&str> = vec![
        "add_key",
        "request_key",
        "keyctl",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "nfsservctl",
        "uselib",
        "ustat",
        "sysfs",
        "_sysctl",
        "create_module",
        "get_kernel_syms",
        "query_module",
        "kexec_load",
        "kexec_file_load",
        "swapon",
        "swapoff",
        "pivot_root",
        "move_pages",
        "migrate_pages",
    ];
    let admin = has("CAP_SYS_ADMIN");
    let by_cap: [(&str, &[&str]); 11] = [
        ("CAP_SYS_MODULE", &["init_module", "finit_module", "delete_module"]),
        ("CAP_SYS_BOOT", &["reboot"]),
        ("CAP_SYS_TIME", &["settimeofday", "clock_settime"]),
        ("CAP_SYS_PACCT", &["acct"]),
        ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
        ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
        ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise"]),
        ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
        ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
        ("CAP_BPF", &["bpf"]),
        ("CAP_PERFMON", &["perf_event_open"]),
    ];
    for (cap, names) in by_cap {
        // CAP_SYS_ADMIN allows bpf and perf events too.
        let allowed = has(cap) || (admin && matches!(cap, "CAP_BPF" | "CAP_PERFMON"));
        if !allowed {
            denied.extend_from_slice(names);
        }
    }
    if !admin && !has("CAP_SYSLOG") {
        denied.push("syslog");
    }
    let mut rules = Vec::new();
    if !admin {
        denied.extend_from_slice(&[
            "mount",
            "umount2",
            "setns",
            "unshare",
            "quotactl",
            "quotactl_fd",
            "fanotify_init",
            "lookup_dcookie",
            "sethostname",
            "setdomainname",
            "open_tree",
            "move_mount",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
        ]);
        for flag in NAMESPACE_FLAGS {
            rules.push(SyscallRule {
                names: vec!["clone".into()],
                action: eperm,
                args: vec![ArgCondition { index: 0, op: CmpOp::MaskedEq, value: flag, mask: flag }],
            });
        }
        rules.push(SyscallRule {
            names: vec!["clone3".into()],
            action: Action::Errno(libc::ENOSYS as u32),
            args: vec![],
        });
    }
    // AF_VSOCK sockets, and personalities other than Linux's own (with or
    // without address-space randomisation, 32-bit) and the query.
    rules.push(SyscallRule {
        names: vec!["socket".into()],
        action: eperm,
        args: vec![ArgCondition { index: 0, op: CmpOp::Eq, value: libc::AF_VSOCK as u64, mask: 0 }],
    });
    rules.push(SyscallRule {
        names: vec!["personality".into()],
        action: eperm,
        args: [0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff]
            .into_iter()
            .map(|v| ArgCondition { index: 0, op: CmpOp::Ne, value: v, mask: 0 })
            .collect(),
    });
    rules.push(SyscallRule { names: denied.into_iter().map(String::from).collect(), action: eperm, args: vec![] });
    SeccompProfile { default_action: Action::Allow, rules }
}

impl SeccompProfile {
    /// A profile in Docker's JSON format (`--security-opt seccomp=FILE`),
    /// for a container with capabilities `caps`: rules whose `includes` or
    /// `excludes` (capabilities, architectures, minimum kernel) rule them
    /// out for it are dropped, as Docker does.
    pub fn from_docker_json(json: &[u8], caps: &[Cap]) -> Result<SeccompProfile, String> {
        let p: DockerProfile = serde_json::from_slice(json).map_err(|e| format!("not a seccomp profile: {e}"))?;
        let default_errno = p.default_errno_ret.unwrap_or(libc::EPERM as u32);
        let default_action = docker_action(&p.default_action, p.default_errno_ret.unwrap_or(default_errno))?;
        let has = |c: &String| caps.iter().any(|cap| Some(cap.name()) == c.strip_prefix("CAP_"));
        let arch = docker_arch();
        let kernel = kernel_version();
        let mut rules = Vec::new();
        for call in p.syscalls {
            let inc = &call.includes;
            let exc = &call.excludes;
            let applies = inc.caps.iter().all(has)
                && (inc.arches.is_empty() || inc.arches.iter().any(|a| a == arch))
                && inc.min_kernel.as_deref().is_none_or(|m| parse_version(m) <= kernel)
                && !exc.caps.iter().any(has)
                && !exc.arches.iter().any(|a| a == arch);
            if !applies {
                continue;
            }
            let mut names = call.names;
            names.extend(call.name);
            let action = docker_action(&call.action, call.errno_ret.unwrap_or(default_errno))?;
            let args = call.args.iter().map(docker_arg).collect::<Result<Vec<_>, _>>()?;
            rules.push(SyscallRule { names, action, args });
        }
        Ok(SeccompProfile { default_action, rules })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<DockerSyscall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerSyscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<DockerArg>,
    #[serde(default)]
    includes: DockerFilter,
    #[serde(default)]
    excludes: DockerFilter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerFilter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

fn docker_action(name: &str, errno: u32) -> Result<Action, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_LOG" => Action::Log,
        other => return Err(format!("the seccomp action {other} is not supported (strata has no tracer or notifier)")),
    })
}

/// libseccomp's comparison; for MASKED_EQ, `value` is the mask and
/// `valueTwo` what the masked argument must equal.
fn docker_arg(a: &DockerArg) -> Result<ArgCondition, String> {
    let (op, value, mask) = match a.op.as_str() {
        "SCMP_CMP_EQ" => (CmpOp::Eq, a.value, 0),
        "SCMP_CMP_NE" => (CmpOp::Ne, a.value, 0),
        "SCMP_CMP_LT" => (CmpOp::Lt, a.value, 0),
        "SCMP_CMP_LE" => (CmpOp::Le, a.value, 0),
        "SCMP_CMP_GT" => (CmpOp::Gt, a.value, 0),
        "SCMP_CMP_GE" => (CmpOp::Ge, a.value, 0),
        "SCMP_CMP_MASKED_EQ" => (CmpOp::MaskedEq, a.value_two, a.value),
        other => return Err(format!("unknown seccomp comparison {other}")),
    };
    if a.index > 5 {
        return Err(format!("seccomp argument index {} out of range (0-5)", a.index));
    }
    Ok(ArgCondition { index: a.index, op, value, mask })
}

/// This machine's architecture as Docker's profiles name it.
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        other => other,
    }
}

fn parse_version(v: &str) -> (u32, u32) {
    let mut parts = v.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn kernel_version() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|r| parse_version(&r)).unwrap_or((0, 0))
}

/// A compiled profile: BPF programs to install in this order.
pub(crate) type Compiled = Vec<seccompiler::BpfProgram>;

/// Compiles `profile` for this machine's architecture. Syscall names this
/// architecture does not have are skipped, as libseccomp does (profiles
/// name the syscalls of every architecture).
pub(crate) fn compile(profile: &SeccompProfile) -> Result<Compiled, RunnerError> {
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| RunnerError::Invalid(format!("seccomp: {e}")))?;
    let mut actions: BTreeSet<Action> = profile.rules.iter().map(|r| r.action).collect();
    let mut filters = Vec::new();
    if profile.default_action != Action::Allow {
        filters.push((profile.default_action, Action::Allow));
        actions.remove(&Action::Allow);
    }
    filters.extend(actions.into_iter().filter(|a| *a != Action::Allow).map(|a| (Action::Allow, a)));
    let mut compiled = Vec::new();
    // Names this architecture lacks, learnt from seccompiler's refusals: one
    // compile per unknown name rather than a probe per name (a Docker profile
    // names ~400; probing each cost ~25 ms per container start).
    let mut unknown = BTreeSet::new();
    for (mismatch, matched) in filters {
        let rules: Vec<&SyscallRule> = profile.rules.iter().filter(|r| r.action == matched).collect();
        let program = loop {
            let json = filter_json(&rules, mismatch, matched, &unknown);
            match seccompiler::compile_from_json(json.to_string().as_bytes(), arch) {
                Ok(mut map) => break map.remove("f").unwrap_or_default(),
                Err(e) => match unknown_name(&e.to_string()).filter(|n| !unknown.contains(n) && !known(n, arch)) {
                    Some(name) => {
                        unknown.insert(name);
                    }
                    None => return Err(RunnerError::Invalid(format!("seccomp profile: {e}"))),
                },
            }
        };
        compiled.push(program);
    }
    Ok(compiled)
}

/// The syscall name in seccompiler's "Invalid syscall name: NAME for given
/// arch" refusal.
fn unknown_name(message: &str) -> Option<String> {
    let rest = &message[message.find("Invalid syscall name: ")? + "Invalid syscall name: ".len()..];
    Some(rest[..rest.find(" for given arch")?].to_string())
}

/// seccompiler's JSON for one filter (it maps syscall names to numbers).
fn filter_json(
    rules: &[&SyscallRule],
    mismatch: Action,
    matched: Action,
    unknown: &BTreeSet<String>,
) -> serde_json::Value {
    use serde_json::json;
    let action = |a: Action| match a {
        Action::Allow => json!("allow"),
        Action::Errno(n) => json!({ "errno": n }),
        Action::KillThread => json!("kill_thread"),
        Action::KillProcess => json!("kill_process"),
        Action::Trap => json!("trap"),
        Action::Log => json!("log"),
    };
    // A syscall matched unconditionally by one rule takes no conditional ones.
    let always: BTreeSet<&str> =
        rules.iter().filter(|r| r.args.is_empty()).flat_map(|r| r.names.iter().map(String::as_str)).collect();
    let mut entries = Vec::new();
    for r in rules {
        for name in r.names.iter().filter(|n| !unknown.contains(*n)) {
            if r.args.is_empty() {
                entries.push(json!({ "syscall": name }));
            } else if !always.contains(name.as_str()) {
                let args: Vec<serde_json::Value> = r
                    .args
                    .iter()
                    .map(|c| {
                        let op = match c.op {
                            CmpOp::Eq => json!("eq"),
                            CmpOp::Ne => json!("ne"),
                            CmpOp::Lt => json!("lt"),
                            CmpOp::Le => json!("le"),
                            CmpOp::Gt => json!("gt"),
                            CmpOp::Ge => json!("ge"),
                            CmpOp::MaskedEq => json!({ "masked_eq": c.mask }),
                        };
                        json!({ "index": c.index, "type": "qword", "op": op, "val": c.value })
                    })
                    .collect();
                entries.push(json!({ "syscall": name, "args": args }));
            }
        }
    }
    json!({ "f": { "mismatch_action": action(mismatch), "match_action": action(matched), "filter": entries } })
}

/// Whether this architecture has a syscall of that name (seccompiler's
/// table, asked through a one-rule filter).
fn known(name: &str, arch: seccompiler::TargetArch) -> bool {
    let probe = serde_json::json!({ "p": { "mismatch_action": "allow", "match_action": "log", "filter": [{ "syscall": name }] } });
    seccompiler::compile_from_json(probe.to_string().as_bytes(), arch).is_ok()
}

/// Installs `compiled` in this (single-threaded, about to exec) process.
/// Needs CAP_SYS_ADMIN in its user namespace (or no_new_privs set before).
pub(crate) fn install(compiled: &Compiled) -> std::io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const seccompiler::sock_filter,
    }
    for prog in compiled.iter().filter(|p| !p.is_empty()) {
        let fprog = SockFprog { len: prog.len() as libc::c_ushort, filter: prog.as_ptr() };
        // SAFETY: the kernel copies the program in; `fprog` outlives the call.
        let rc =
            unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const SockFprog) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
