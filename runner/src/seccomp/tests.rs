use super::*;

/// Runs `f` in a forked child with `compiled` installed; its exit status.
fn in_child(compiled: &Compiled, f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes raw syscalls only, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // The test process may lack CAP_SYS_ADMIN: no_new_privs then.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        let code = if install(compiled).is_ok() { f() } else { 99 };
        unsafe { libc::_exit(code) };
    }
    let mut st = 0;
    unsafe { libc::waitpid(pid, &mut st, 0) };
    libc::WEXITSTATUS(st)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn a_refused_syscall_gets_its_errno_and_the_rest_run() {
    let dir = tempfile::tempdir().unwrap();
    let target = std::ffi::CString::new(dir.path().join("refused").into_os_string().into_encoded_bytes()).unwrap();
    let profile = SeccompProfile {
        default_action: Action::Allow,
        rules: vec![SyscallRule {
            // "vm86" exists on 32-bit x86 only: skipped here, as libseccomp does.
            names: vec!["mkdir".into(), "mkdirat".into(), "vm86".into()],
            action: Action::Errno(libc::EACCES as u32),
            args: vec![],
        }],
    };
    let compiled = compile(&profile).unwrap();
    let code = in_child(&compiled, || {
        let refused = unsafe { libc::mkdir(target.as_ptr(), 0o755) } == -1 && errno() == libc::EACCES;
        let other = unsafe { libc::getpid() } > 0;
        if refused && other {
            0
        } else {
            1
        }
    });
    assert_eq!(code, 0);
    assert!(!dir.path().join("refused").exists());
}

#[test]
fn the_default_profile_refuses_new_namespaces_and_keyrings() {
    let compiled = compile(&default_profile(crate::caps::DEFAULT_CAPS)).unwrap();
    let code = in_child(&compiled, || {
        let unshare = unsafe { libc::unshare(libc::CLONE_NEWUSER) } == -1 && errno() == libc::EPERM;
        let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) } == -1 && errno() == libc::EPERM;
        let clone3 = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) } == -1 && errno() == libc::ENOSYS;
        let vsock = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) } == -1 && errno() == libc::EPERM;
        // Querying the personality is allowed; ADDR_NO_RANDOMIZE is not.
        let query = unsafe { libc::personality(0xffff_ffff) } != -1;
        let norandom = unsafe { libc::personality(0x0040000) } == -1 && errno() == libc::EPERM;
        // A plain fork (clone without namespace flags) still works.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        let forked = pid > 0;
        if !(vsock && query && norandom) {
            return 5;
        }
        match (unshare, keyctl, clone3, forked) {
            (true, true, true, true) => 0,
            (false, _, _, _) => 1,
            (_, false, _, _) => 2,
            (_, _, false, _) => 3,
            _ => 4,
        }
    });
    assert_eq!(code, 0);
}

#[test]
fn capabilities_allow_again_what_docker_allows_with_them() {
    let names =
        |caps: &[Cap]| -> Vec<String> { default_profile(caps).rules.iter().flat_map(|r| r.names.clone()).collect() };
    let default = names(crate::caps::DEFAULT_CAPS);
    for n in ["mount", "unshare", "reboot", "init_module", "clone3", "bpf"] {
        assert!(default.contains(&n.to_string()), "{n} refused by default");
    }
    let admin = names(&[Cap::SYS_ADMIN]);
    for n in ["mount", "unshare", "clone3", "bpf", "perf_event_open"] {
        assert!(!admin.contains(&n.to_string()), "{n} allowed with CAP_SYS_ADMIN");
    }
    assert!(admin.contains(&"reboot".to_string()));
    assert!(!names(&[Cap::SYS_BOOT]).contains(&"reboot".to_string()));
}

#[test]
fn docker_profiles_are_read_with_their_conditions() {
    let json = br#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [
            { "names": ["read", "write"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 8, "op": "SCMP_CMP_EQ" }] },
            { "names": ["clone"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }],
              "excludes": { "caps": ["CAP_SYS_ADMIN"] } },
            { "names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": { "caps": ["CAP_SYS_ADMIN"] } },
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
            { "names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": { "arches": ["s390x"] } }
        ]
    }"#;
    let p = SeccompProfile::from_docker_json(json, crate::caps::DEFAULT_CAPS).unwrap();
    assert_eq!(p.default_action, Action::Errno(1));
    let names: Vec<&str> = p.rules.iter().flat_map(|r| r.names.iter().map(String::as_str)).collect();
    assert_eq!(
        names,
        ["read", "write", "personality", "clone", "clone3"],
        "mount needs CAP_SYS_ADMIN; arch_prctl is s390x's"
    );
    assert_eq!(p.rules[2].args, [ArgCondition { index: 0, op: CmpOp::MaskedEq, value: 0, mask: 2114060288 }]);
    assert_eq!(p.rules[3].action, Action::Errno(38));
    let admin = SeccompProfile::from_docker_json(json, &[Cap::SYS_ADMIN]).unwrap();
    let names: Vec<&str> = admin.rules.iter().flat_map(|r| r.names.iter().map(String::as_str)).collect();
    assert!(names.contains(&"mount") && !names.contains(&"clone"));
    compile(&p).unwrap();
    for (bad, why) in [
        (&br#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#[..], "not supported"),
        (br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#, "out of range"),
        (b"[]", "not a seccomp profile"),
    ] {
        let e = SeccompProfile::from_docker_json(bad, &[]).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}
