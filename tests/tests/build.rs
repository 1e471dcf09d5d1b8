//! `strata build` end to end: a multi-stage Dockerfile with ARG, ENV,
//! WORKDIR, COPY (files, directories, `--chown`, `--chmod`, `--from`), ADD
//! of an archive, RUN and configuration instructions builds the image it
//! describes — as root and as the unprivileged `strata-test` — and bad
//! Dockerfiles, failing steps and paths out of the context are refused
//! with a clear message, leaving no container or image behind.

use std::path::PathBuf;

use strata_e2e::*;

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS base
ARG GREETING=hi
ENV APP=/app PATH=/app/bin:$PATH
WORKDIR $APP
COPY hello.txt .
COPY sub/ ./sub/
COPY --chown=1000:100 --chmod=640 hello.txt /etc/owned
ADD tree.tar.gz /unpacked/
RUN echo "$GREETING from RUN" > greeting \
 && mkdir -p bin \
 && printf '#!/bin/sh\necho tool says hi\n' > bin/tool \
 && chmod 755 bin/tool \
 && touch owned-by-1234 && chown 1234:5678 owned-by-1234 \
 && rm /etc/group

FROM ${BASE}
COPY --from=base /app/greeting /app/bin/tool /opt/
COPY --from=base /app/owned-by-1234 /opt/
LABEL built=yes
EXPOSE 8080
CMD ["sh", "-c", "cat /opt/greeting; /opt/tool"]
"#;

struct Env {
    _reg: Registry,
    s: Strata,
    bb: String,
    ctx: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.s.remove_all_containers();
    }
}

/// A store that pulled the busybox fixture, and a build context its user can read.
fn setup(unprivileged: bool) -> Env {
    let (reg, s, bb) = store_with_fixture("busybox", unprivileged);
    let ctx = s.base().join("context");
    std::fs::create_dir_all(ctx.join("sub/deeper")).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello file\n").unwrap();
    std::fs::write(ctx.join("sub/a"), "a\n").unwrap();
    std::fs::write(ctx.join("sub/deeper/b"), "b\n").unwrap();
    std::os::unix::fs::symlink("a", ctx.join("sub/link")).unwrap();
    std::fs::write(ctx.join("secret.log"), "not for the image\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "*.log\n").unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    run_tool(std::process::Command::new("tar").arg("-czf").arg(ctx.join("tree.tar.gz")).arg("-C").arg(&ctx).arg("sub"));
    // The test user reads the context, as a user's own files would be readable.
    run_tool(std::process::Command::new("chmod").args(["-R", "a+rX"]).arg(&ctx));
    Env { _reg: reg, s, bb, ctx }
}

#[test]
fn a_dockerfile_builds_the_image_it_describes() {
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let e = setup(unprivileged);
        let s = &e.s;
        let ctx = e.ctx.to_str().unwrap();
        let out = s.ok(&[
            "build",
            "-t",
            "built:1",
            "-t",
            "built:also",
            "--build-arg",
            &format!("BASE={}", e.bb),
            "--build-arg",
            "GREETING=hello",
            ctx,
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.contains(&"STEP 1/15: FROM ${BASE} AS base"), "{who}: {out}");
        assert!(lines.contains(&"STEP 15/15: CMD [\"sh\", \"-c\", \"cat /opt/greeting; /opt/tool\"]"), "{who}: {out}");
        assert!(
            lines.contains(&"Successfully tagged built:1") && lines.contains(&"Successfully tagged built:also"),
            "{who}: {out}"
        );
        let id = lines.last().copied().unwrap_or_default();
        assert_eq!(format!("sha256:{id}"), s.ok(&["image", "inspect", "-f", "{{.Id}}", "built:also"]).trim(), "{who}");

        // The final stage: what it copied from the first, and its configuration.
        assert_eq!(s.ok(&["run", "--rm", "built:1"]), "hello from RUN\ntool says hi\n", "{who}");
        let tree = s.tree("built:1");
        let line = |t: &str, p: &str| {
            listing::find_line(t, p).map(str::to_string).unwrap_or_else(|| panic!("{who}: no {p} in\n{t}"))
        };
        assert!(line(&tree, "/opt/tool").starts_with("/opt/tool f 0755 0 0 "), "{who}");
        assert!(
            line(&tree, "/opt/owned-by-1234").starts_with("/opt/owned-by-1234 f 0644 0 0 0 "),
            "{who}: COPY makes root the owner"
        );
        let cfg = s.ok(&[
            "image",
            "inspect",
            "-f",
            "{{json .Config.Cmd}}|{{json .Config.Labels}}|{{json .Config.ExposedPorts}}",
            "built:1",
        ]);
        assert_eq!(
            cfg.trim(),
            r#"["sh","-c","cat /opt/greeting; /opt/tool"]|{"built":"yes"}|{"8080/tcp":{}}"#,
            "{who}"
        );

        // The first stage alone (--target), quiet: only the id on standard output.
        let quiet =
            s.ok(&["build", "-q", "--target", "base", "-t", "base:1", "--build-arg", &format!("BASE={}", e.bb), ctx]);
        assert_eq!(quiet.trim().len(), 64, "{who}: {quiet:?}");
        let tree = s.tree("base:1");
        for (path, expected) in [
            ("/app/hello.txt", "/app/hello.txt f 0644 0 0 11 "),
            ("/app/sub/deeper/b", "/app/sub/deeper/b f 0644 0 0 2 "),
            ("/app/sub/link", "/app/sub/link l 0777 0 0 0 a"),
            ("/etc/owned", "/etc/owned f 0640 1000 100 11 "),
            ("/unpacked/sub/deeper/b", "/unpacked/sub/deeper/b f 0644 "),
            ("/app/owned-by-1234", "/app/owned-by-1234 f 0644 1234 5678 0 "),
            ("/app/greeting", "/app/greeting f 0644 0 0 12 "),
        ] {
            assert!(line(&tree, path).starts_with(expected), "{who}: {} against {expected}", line(&tree, path));
        }
        assert!(listing::find_line(&tree, "/etc/group").is_none(), "{who}: RUN's deletion is a whiteout");
        assert!(listing::find_line(&tree, "/app/secret.log").is_none(), "{who}");
        let env = s.ok(&["image", "inspect", "-f", "{{json .Config.Env}} {{.Config.WorkingDir}}", "base:1"]);
        assert!(env.starts_with(r#"["APP=/app","PATH=/app/bin:"#) && env.trim().ends_with(" /app"), "{who}: {env}");
        assert!(!env.contains("GREETING"), "{who}: ARGs stay out of the image: {env}");
        let history = s.ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", "base:1"]);
        assert!(
            history.lines().next().unwrap_or_default().starts_with("RUN /bin/sh -c echo \"$GREETING from RUN\""),
            "{who}: {history}"
        );

        // Nothing left over: no step container, no untagged step image.
        assert_eq!(s.ok(&["ps", "-aq"]), "", "{who}");
        let images = s.ok(&["images", "-a", "--format", "{{.Repository}}"]);
        assert!(!images.contains("<none>"), "{who}: {images}");
    }
}

#[test]
fn bad_builds_say_why_and_leave_nothing_behind() {
    let e = setup(false);
    let s = &e.s;
    std::fs::write(e.ctx.parent().unwrap().join("outside.txt"), "outside the context\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", e.ctx.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("/", e.ctx.join("root-link")).unwrap();
    let ctx = e.ctx.to_str().unwrap();
    let cases: &[(&str, &str)] = &[
        ("RUN exit 3", "process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3"),
        ("FOO bar", "dockerfile parse error on line 2: unknown instruction: FOO"),
        ("COPY missing.txt /", "\"missing.txt\": not found"),
        ("COPY ../outside.txt /", "forbidden path outside the build context"),
        ("COPY passwd-link /leaked", "\"passwd-link\": not found"),
        ("COPY secret.log /", "\"secret.log\": not found"),
        ("RUN --mount=type=ssh true", "RUN --mount=type=ssh is not supported"),
        ("ADD https://example.invalid/tool.git /src", "ADD of a git repository is not supported"),
    ];
    for (line, message) in cases {
        let file = e.ctx.join("Dockerfile.bad");
        std::fs::write(&file, format!("FROM {}\n{line}\n", e.bb)).unwrap();
        let (code, err) = s.fails(&["build", "-t", "bad:1", "-f", file.to_str().unwrap(), ctx]);
        assert_eq!(code, 1, "{line}: {err}");
        assert!(err.contains(message), "{line}: expected {message:?} in: {err}");
    }
    let (_, err) = s.fails(&["build", "--target", "nope", "--build-arg", &format!("BASE={}", e.bb), ctx]);
    assert!(err.contains("target stage \"nope\" could not be found"), "{err}");
    assert_eq!(s.ok(&["ps", "-aq"]), "", "no step container is left");
    let images = s.ok(&["images", "-a", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!images.contains("bad:1") && !images.contains("<none>"), "{images}");

    // A base image not in the store yet is pulled; with -q its progress stays off standard output.
    let full = e._reg.push_oci_layout(&fixtures().oci, "full", "e2e/full:1");
    std::fs::write(e.ctx.join("Dockerfile.pull"), format!("FROM {full}\nRUN echo step output\n")).unwrap();
    let out = s.run(&["build", "-q", "-f", e.ctx.join("Dockerfile.pull").to_str().unwrap(), ctx]);
    assert!(out.status.success(), "{}", strata_e2e::strata::show_output(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.len() == 65 && stdout.trim().bytes().all(|b| b.is_ascii_hexdigit()), "only the id: {stdout:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("step output"));

    // A symlink of the context resolves inside the context.
    std::fs::write(e.ctx.join("Dockerfile.link"), format!("FROM {}\nCOPY root-link/hello.txt /via-link\n", e.bb))
        .unwrap();
    s.ok(&["build", "-q", "-t", "link:1", "-f", e.ctx.join("Dockerfile.link").to_str().unwrap(), ctx]);
    assert!(listing::find_line(&s.tree("link:1"), "/via-link")
        .unwrap_or_default()
        .starts_with("/via-link f 0644 0 0 11 "));
}

#[test]
fn the_build_cache_reruns_only_what_changed() {
    let e = setup(false);
    let s = &e.s;
    let dir = e.ctx.join("cached");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("input"), "one\n").unwrap();
    let stamp = "head -c 8 /dev/urandom | od -An -tx1";
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {}\nWORKDIR /app\nRUN {stamp} > /stamp1\nCOPY input .\nRUN {stamp} > /stamp2\n", e.bb),
    )
    .unwrap();
    let ctx = dir.to_str().unwrap();
    let build = |tag: &str, extra: &[&str]| {
        let mut args = vec!["build", "-t", tag];
        args.extend(extra);
        args.push(ctx);
        let out = s.ok(&args);
        let stamps = s.ok(&["run", "--rm", tag, "cat", "/stamp1", "/stamp2"]);
        (out.matches("--> Using cache ").count(), stamps.lines().map(str::to_string).collect::<Vec<_>>())
    };
    let (hits, first) = build("c:1", &[]);
    assert_eq!(hits, 0);
    let (hits, again) = build("c:2", &[]);
    assert_eq!((hits, &again), (2, &first), "an unchanged build reuses both RUN steps");
    std::fs::write(dir.join("input"), "two\n").unwrap();
    let (hits, changed) = build("c:3", &[]);
    assert_eq!(hits, 1, "the RUN before the changed COPY is reused, the one after it runs");
    assert_eq!(changed[0], first[0]);
    assert_ne!(changed[1], first[1]);
    let (hits, fresh) = build("c:4", &["--no-cache"]);
    assert_eq!(hits, 0);
    assert_ne!(fresh[0], first[0]);

    // `system df` counts the cache; `builder prune` forgets it.
    let df = s.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    let total: usize = df.lines().find_map(|l| l.strip_prefix("Build Cache ")).unwrap_or("0").parse().unwrap();
    assert!(total >= 3, "{df}");
    assert!(s.ok(&["builder", "prune", "-f"]).starts_with("Total reclaimed space: "));
    let (hits, _) = build("c:5", &[]);
    assert_eq!(hits, 0, "nothing is cached after a prune");
}

#[test]
fn here_documents_in_run_and_copy() {
    let e = setup(false);
    let s = &e.s;
    let dir = e.ctx.join("heredocs");
    std::fs::create_dir_all(&dir).unwrap();
    let dockerfile = r#"# syntax=docker/dockerfile:1
FROM BASE
ARG WHO=heredoc
RUN <<EOF
set -e
echo "script from $WHO" > /script.out
echo second line >> /script.out
EOF
RUN cat > /fromshell <<'END'
literal $WHO
END
RUN <<SCRIPT
#!/bin/sh -e
echo "run by its own interpreter as $0" > /shebang.out
SCRIPT
COPY <<-conf <<two /etc/app/
	key=value
	conf
second file
two
COPY --chmod=755 <<EOF /usr/local/bin/hello
#!/bin/sh
echo hello from a heredoc
EOF
CMD ["sh", "-c", "cat /script.out /fromshell /shebang.out /etc/app/conf /etc/app/two; hello"]
"#;
    std::fs::write(dir.join("Dockerfile"), dockerfile.replace("BASE", &e.bb)).unwrap();
    s.ok(&["build", "-q", "-t", "heredocs:1", dir.to_str().unwrap()]);
    assert_eq!(
        s.ok(&["run", "--rm", "heredocs:1"]),
        "script from heredoc\nsecond line\nliteral $WHO\nrun by its own interpreter as /run/strata-scripts/SCRIPT\n\
         key=value\nsecond file\nhello from a heredoc\n"
    );
    let tree = s.tree("heredocs:1");
    assert!(listing::find_line(&tree, "/run").is_none(), "the script is in no layer: {tree}");
    let line = |p: &str| listing::find_line(&tree, p).unwrap_or_default().to_string();
    assert!(line("/usr/local/bin/hello").starts_with("/usr/local/bin/hello f 0755 0 0 36 "), "{tree}");
    assert!(line("/etc/app/conf").starts_with("/etc/app/conf f 0644 0 0 10 "), "{tree}");
}

#[test]
fn run_mounts_a_cache_a_context_directory_and_a_tmpfs() {
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let e = setup(unprivileged);
        let s = &e.s;
        let dockerfile = r#"FROM BASE
RUN --mount=type=cache,target=/cache sh -c 'echo run >> /cache/count; wc -l < /cache/count > /runs'
RUN --mount=type=bind,source=sub,target=/mnt/src cat /mnt/src/a > /copied
RUN --mount=type=tmpfs,target=/scratch sh -c 'echo x > /scratch/x && ls /scratch > /tmpfs.seen'
"#;
        std::fs::write(e.ctx.join("Dockerfile.mounts"), dockerfile.replace("BASE", &e.bb)).unwrap();
        run_tool(std::process::Command::new("chmod").arg("a+r").arg(e.ctx.join("Dockerfile.mounts")));
        let file = e.ctx.join("Dockerfile.mounts");
        let build = |tag: &str| {
            s.ok(&["build", "-q", "--no-cache", "-t", tag, "-f", file.to_str().unwrap(), e.ctx.to_str().unwrap()]);
            s.ok(&["run", "--rm", tag, "cat", "/runs", "/copied", "/tmpfs.seen"])
        };
        assert_eq!(build("m:1"), "1\na\nx\n", "{who}");
        assert_eq!(build("m:2"), "2\na\nx\n", "{who}: the cache directory outlives the build");
        let tree = s.tree("m:2");
        for gone in ["/cache", "/mnt", "/scratch"] {
            assert!(listing::find_line(&tree, gone).is_none(), "{who}: {gone} is a mount point, not content");
        }
        let (code, err) = {
            std::fs::write(
                e.ctx.join("Dockerfile.rw"),
                format!("FROM {}\nRUN --mount=type=bind,rw,target=/ctx true\n", e.bb),
            )
            .unwrap();
            run_tool(std::process::Command::new("chmod").arg("a+r").arg(e.ctx.join("Dockerfile.rw")));
            s.fails(&["build", "-f", e.ctx.join("Dockerfile.rw").to_str().unwrap(), e.ctx.to_str().unwrap()])
        };
        assert_eq!(code, 1, "{who}: {err}");
        assert!(err.contains("its writes would reach the build context"), "{who}: {err}");
    }
}

#[test]
fn secrets_reach_run_steps_and_stay_out_of_the_image() {
    let e = setup(false);
    let s = &e.s;
    let secret = s.base().join("token");
    std::fs::write(&secret, "s3cr3t-value\n").unwrap();
    let dir = e.ctx.join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {}\nRUN --mount=type=secret,id=token wc -c < /run/secrets/token > /length\n\
             RUN --mount=type=secret,id=absent sh -c 'test ! -e /run/secrets/absent && echo left-out > /absent'\n",
            e.bb
        ),
    )
    .unwrap();
    let iid = s.base().join("iid");
    let id = s.ok(&[
        "build",
        "-q",
        "--secret",
        &format!("id=token,src={}", secret.display()),
        "--iidfile",
        iid.to_str().unwrap(),
        "-t",
        "secrets:1",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), format!("sha256:{}", id.trim()), "--iidfile");
    assert_eq!(s.ok(&["run", "--rm", "secrets:1", "cat", "/length", "/absent"]), "13\nleft-out\n");
    let tree = s.tree("secrets:1");
    assert!(!tree.contains("/run/secrets"), "the secret's mount point is not in the image:\n{tree}");
    let saved = s.base().join("saved.tar");
    s.ok(&["save", "-o", saved.to_str().unwrap(), "secrets:1"]);
    let mut archive = Vec::new();
    let gz = std::fs::read(&saved).unwrap();
    // The layers are gzipped inside the archive: look through each for the secret.
    for start in (0..gz.len().saturating_sub(2)).filter(|&i| gz[i] == 0x1f && gz[i + 1] == 0x8b) {
        let mut d = flate2::read::GzDecoder::new(&gz[start..]);
        let _ = std::io::Read::read_to_end(&mut d, &mut archive);
    }
    assert!(!String::from_utf8_lossy(&archive).contains("s3cr3t-value"), "the secret's content is in no layer");
    let (code, err) = {
        std::fs::write(
            dir.join("Dockerfile.required"),
            format!("FROM {}\nRUN --mount=type=secret,id=token,required true\n", e.bb),
        )
        .unwrap();
        s.fails(&["build", "-f", dir.join("Dockerfile.required").to_str().unwrap(), dir.to_str().unwrap()])
    };
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("secret token is required: give it with --secret id=token,src=FILE"), "{err}");
}

/// `python3 -m http.server` on loopback serving `dir`, stopped when dropped.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &std::path::Path) -> HttpServer {
        let port = strata_e2e::registry::free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the HTTP server", std::time::Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn add_fetches_urls_and_checks_their_checksum() {
    let e = setup(false);
    let s = &e.s;
    let www = s.base().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("note.txt"), "served over http\n").unwrap();
    run_tool(std::process::Command::new("touch").args(["-d", "2001-02-03 04:05:06 UTC"]).arg(www.join("note.txt")));
    let server = HttpServer::start(&www);
    let url = format!("http://127.0.0.1:{}/note.txt", server.port);
    let sum = sha256_hex(b"served over http\n");
    let dockerfile = e.ctx.join("Dockerfile.add");
    std::fs::write(
        &dockerfile,
        format!(
            "FROM {}\nADD {url} /dl/\nADD --checksum=sha256:{sum} {url}?query=1 /exact.txt\n\
             ADD --chmod=644 --chown=12:34 {url} /owned\n",
            e.bb
        ),
    )
    .unwrap();
    let ctx = e.ctx.to_str().unwrap();
    s.ok(&["build", "-q", "-t", "added:1", "-f", dockerfile.to_str().unwrap(), ctx]);
    let out = s.ok(&[
        "run",
        "--rm",
        "added:1",
        "sh",
        "-c",
        "cat /dl/note.txt /exact.txt; stat -c '%a %u:%g %Y' /dl/note.txt /exact.txt /owned",
    ]);
    assert_eq!(
        out, "served over http\nserved over http\n600 0:0 981173106\n600 0:0 981173106\n644 12:34 981173106\n",
        "the file, Docker's mode 0600 and the server's Last-Modified time"
    );

    // A wrong checksum, a missing file, a git repository: refused.
    for (line, want) in [
        (format!("ADD --checksum=sha256:{} {url} /x", "0".repeat(64)), "not the sha256:0000"),
        (format!("ADD http://127.0.0.1:{}/missing /x", server.port), "404"),
        (format!("ADD --checksum=md5:1 {url} /x"), "invalid --checksum"),
        ("ADD https://example.invalid/repo.git /src".to_string(), "git repository is not supported"),
        (format!("COPY --checksum=sha256:{sum} hello.txt /x"), "COPY --checksum is not supported"),
    ] {
        std::fs::write(&dockerfile, format!("FROM {}\n{line}\n", e.bb)).unwrap();
        let (code, err) = s.fails(&["build", "-q", "-t", "bad:1", "-f", dockerfile.to_str().unwrap(), ctx]);
        assert_eq!(code, 1, "{line}: {err}");
        assert!(err.contains(want), "{line}: expected {want:?} in {err}");
    }
}

#[test]
fn run_mounts_files_of_another_stage_or_image() {
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let e = setup(unprivileged);
        let s = &e.s;
        let dockerfile = e.ctx.join("Dockerfile.from");
        std::fs::write(
            &dockerfile,
            format!(
                "FROM {bb} AS builder\n\
                 RUN mkdir -p /out/sub && echo built > /out/artifact && echo deep > /out/sub/x && chmod 750 /out/sub\n\
                 FROM {bb}\n\
                 RUN --mount=type=bind,from=builder,source=/out,target=/mnt/out \
                     cat /mnt/out/artifact /mnt/out/sub/x > /copied && stat -c %a /mnt/out/sub >> /copied\n\
                 RUN --mount=type=bind,from=builder,source=out/artifact,target=/one cat /one >> /copied\n\
                 RUN --mount=from={bb},target=/image test -x /image/bin/busybox && echo image >> /copied\n",
                bb = e.bb
            ),
        )
        .unwrap();
        let ctx = e.ctx.to_str().unwrap();
        s.ok(&["build", "-q", "-t", "from:1", "-f", dockerfile.to_str().unwrap(), ctx]);
        assert_eq!(s.ok(&["run", "--rm", "from:1", "cat", "/copied"]), "built\ndeep\n750\nbuilt\nimage\n", "{who}");
        let tree = s.tree("from:1");
        assert!(listing::find_line(&tree, "/mnt").is_none(), "{who}: the mounts are in no layer: {tree}");
        let left: Vec<_> = std::fs::read_dir(s.root().join("tmp")).map(|d| d.flatten().collect()).unwrap_or_default();
        assert!(left.is_empty(), "{who}: the copies are removed: {left:?}");
        // Another mount type from a stage: refused, with the reason.
        std::fs::write(&dockerfile, format!("FROM {}\nRUN --mount=type=cache,from=x,target=/c true\n", e.bb)).unwrap();
        let (_, err) = s.fails(&["build", "-q", "-f", dockerfile.to_str().unwrap(), ctx]);
        assert!(err.contains("type=cache,from= is not supported"), "{who}: {err}");
    }
}

#[test]
fn output_writes_the_built_files_to_a_directory_or_a_tar() {
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let e = setup(unprivileged);
        let s = &e.s;
        // The usual artifact pattern: build in one stage, export only the result.
        let dockerfile = format!(
            "FROM {} AS build\nRUN mkdir -p /out/sub && echo artifact > /out/result.txt && ln -s result.txt /out/link \\\n \
             && echo deep > /out/sub/deep\nFROM scratch\nCOPY --from=build /out/ /\n",
            e.bb
        );
        let ctx = s.base().join("artifact");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        run_tool(std::process::Command::new("chmod").args(["-R", "a+rwX"]).arg(s.base()));
        let (out_dir, out_tar) = (s.base().join("out"), s.base().join("out.tar"));
        let ctx = ctx.to_str().unwrap();

        s.ok(&["build", "-q", "-t", "art:1", "-o", out_dir.to_str().unwrap(), ctx]);
        assert_eq!(std::fs::read_to_string(out_dir.join("result.txt")).unwrap(), "artifact\n", "{who}");
        assert_eq!(std::fs::read_to_string(out_dir.join("sub/deep")).unwrap(), "deep\n", "{who}");
        assert_eq!(std::fs::read_link(out_dir.join("link")).unwrap(), PathBuf::from("result.txt"), "{who}");
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(out_dir.join("result.txt")).unwrap());
        assert_eq!(owner, if unprivileged { s.uid() } else { 0 }, "{who}: the files belong to the caller");
        assert!(s.ok(&["images", "-q", "art:1"]).trim().len() == 12, "{who}: the image is made too");

        let tar_arg = format!("type=tar,dest={}", out_tar.display());
        s.ok(&["build", "-q", "-o", &tar_arg, ctx]);
        let listed = run_tool(std::process::Command::new("tar").arg("-tf").arg(&out_tar));
        let mut names: Vec<&str> = listed.lines().collect();
        names.sort();
        assert_eq!(names, ["link", "result.txt", "sub", "sub/deep"], "{who}");

        let streamed = s.run(&["build", "-q", "-o", "-", ctx]);
        assert!(streamed.status.success(), "{who}");
        assert_eq!(&streamed.stdout[257..262], b"ustar", "{who}: a tar on stdout and nothing else");
        let (_, err) = s.fails(&["build", "-o", "-", ctx]);
        assert_mentions(&err, &["add --quiet"], who);
        let (_, err) = s.fails(&["build", "-q", "-o", "type=registry", ctx]);
        assert_mentions(&err, &["strata writes type=local or type=tar, not registry"], who);
    }
}

/// Process ids of the running `pasta` processes whose signal mask blocks SIGTERM.
fn pastas_deaf_to_sigterm() -> Vec<String> {
    let mut deaf = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        // (pasta runs as passt, passt.avx2 and the like; its first argument names it.)
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !String::from_utf8_lossy(argv0).rsplit('/').next().is_some_and(|n| n.starts_with("pasta")) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let blocked = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).map(|m| m.trim().to_string());
        let mask = blocked.and_then(|m| u64::from_str_radix(&m, 16).ok()).unwrap_or(0);
        if mask & (1 << (libc::SIGTERM - 1)) != 0 {
            deaf.push(pid);
        }
    }
    deaf
}

#[test]
fn run_steps_leave_no_network_helper_behind() {
    // Each RUN step's network comes from a pasta that is stopped with
    // SIGTERM when the step ends. The build once kept the signals it proxies
    // to a step blocked afterwards, every later step's pasta inherited that
    // mask, ignored the SIGTERM and stayed forever.
    for unprivileged in [false, true] {
        let e = setup(unprivileged);
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let dir = e.ctx.join("steps");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), format!("FROM {}\nRUN true\nRUN true\nRUN true\n", e.bb)).unwrap();
        run_tool(std::process::Command::new("chmod").args(["-R", "a+rX"]).arg(&dir));
        e.s.ok(&["build", "--no-cache", "-q", dir.to_str().unwrap()]);
        let deaf = pastas_deaf_to_sigterm();
        assert!(deaf.is_empty(), "{who}: pasta processes blocking SIGTERM: {deaf:?}");
    }
}

#[test]
fn an_interrupted_build_stops_its_step_and_tags_nothing() {
    let e = setup(false);
    let dir = e.ctx.join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), format!("FROM {}\nRUN echo started; sleep 300\n", e.bb)).unwrap();
    let mut child = e.s.spawn(&["build", "--no-cache", "-t", "interrupted:1", dir.to_str().unwrap()]);
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    // The step runs (its shell, as PID 1, would ignore the signal itself).
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("started"))), "the step never started");
    let begun = std::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(begun.elapsed() < std::time::Duration::from_secs(30), "the build went on for {:?}", begun.elapsed());
    assert!(!status.success(), "{status:?}");
    assert_eq!(e.s.ok(&["images", "-q", "interrupted:1"]), "", "nothing is tagged");
    assert_eq!(e.s.ok(&["ps", "-aq"]), "", "no step container is left");
}

#[test]
fn dockerignore_exceptions_reach_into_ignored_directories() {
    let e = setup(false);
    let dir = e.ctx.join("exceptions");
    for f in ["keep/a", "keep/sub/c", "keep/sub/d", "other/x", "top"] {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f).unwrap();
    }
    std::fs::write(dir.join("Dockerfile"), format!("FROM {}\nCOPY . /c/\n", e.bb)).unwrap();
    let ctx = dir.to_str().unwrap();
    for (ignore, kept) in [
        // Everything out, then one file deep in an ignored directory back in.
        ("*\n!keep/sub/c\n!Dockerfile\n", &["/c/Dockerfile", "/c/keep", "/c/keep/sub", "/c/keep/sub/c"][..]),
        (
            "keep\n!keep/sub\nother\ntop\nDockerfile\n",
            &["/c/.dockerignore", "/c/keep", "/c/keep/sub", "/c/keep/sub/c", "/c/keep/sub/d"],
        ),
        ("**\n!keep/sub/**\n", &["/c/keep", "/c/keep/sub", "/c/keep/sub/c", "/c/keep/sub/d"]),
    ] {
        std::fs::write(dir.join(".dockerignore"), ignore).unwrap();
        e.s.ok(&["build", "-q", "--no-cache", "-t", "ignored:1", ctx]);
        let found = e.s.ok(&["run", "--rm", "ignored:1", "find", "/c", "-mindepth", "1"]);
        let mut found: Vec<&str> = found.lines().collect();
        found.sort();
        assert_eq!(found, kept, ".dockerignore:\n{ignore}");
    }
}

#[test]
fn unset_build_args_and_substitutions_without_a_colon() {
    let e = setup(false);
    let dir = e.ctx.join("words");
    std::fs::create_dir_all(&dir).unwrap();
    let dockerfile = format!(
        "ARG V=outer\nFROM {}\nARG V\nENV H=${{UNSET_VAR-dash}} P=${{V+plus}}\nLABEL \"my label\"=\"two words\"\n\
         RUN echo \"V=$V H=$H P=$P\" > /out\n",
        e.bb
    );
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    // `--build-arg NAME` with NAME unset here leaves the ARG's default alone.
    let mut cmd =
        e.s.command(&["build", "-q", "--build-arg", "STRATA_SURELY_UNSET_ARG", "--build-arg", "V", "-t", "words:1"]);
    cmd.arg(&dir).env_remove("V");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(e.s.ok(&["run", "--rm", "words:1", "cat", "/out"]), "V=outer H=dash P=plus\n");
    let label = e.s.ok(&["image", "inspect", "-f", "{{index .Config.Labels \"my label\"}}", "words:1"]);
    assert_eq!(label.trim(), "two words");
    // `${VAR?message}` of an unset VAR fails the build with the message.
    std::fs::write(dir.join("Dockerfile"), format!("FROM {}\nENV X=${{NEEDED?give NEEDED}}\n", e.bb)).unwrap();
    let (_, err) = e.s.fails(&["build", "-q", dir.to_str().unwrap()]);
    assert!(err.contains("NEEDED: give NEEDED"), "{err}");
}
