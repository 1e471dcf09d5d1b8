#!/usr/bin/env python3
"""Times the union-filesystem benchmark's workloads; started by fs.sh.

Every measurement gets a fresh mount (fs-mount.sh) and, for writable
workloads, an empty upper directory. Then the workload's setup runs (not
timed), then either all caches are dropped ("cold") or the workload's warm-up
runs through the mount ("warm": for a read-only workload that is the workload
itself, for a writing one a read of what it is about to touch), and then the
workload is timed once. Filesystems take turns run by run, so that drift on
the machine spreads over all of them.

A filesystem that fails a workload (mount, setup, command or the check of its
result) gets the error recorded with what its mount showed, and the benchmark
moves on. Results: OUT/WORKLOAD-cold.json and -warm.json (hyperfine's export
layout: results[].command/times/median...), OUT/summary.txt (medians and
ratios to the kernel), OUT/errors.txt.

Environment: WORK RW TARBALL BENCH_DIR OUT RUNS ONLY FS (see fs.sh).
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time

WORK = os.environ["WORK"]
OUT = os.environ["OUT"]
RUNS = int(os.environ.get("RUNS", "3"))
MOUNT = [os.path.join(os.environ["BENCH_DIR"], "fs-mount.sh")]
FSES = os.environ["FS"].split()
TIMEOUT = 600
GIT = ["git", "-C"]  # $HOME/.gitconfig: safe.directory = * (the mounts' owners vary)
ENV = dict(os.environ, HOME=os.path.join(WORK, "home"), GIT_CONFIG_NOSYSTEM="1", LC_ALL="C",
           **{"GIT_%s_%s" % (who, what): "bench" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")})
UP = ["u%04d" % i for i in range(1000)]


class Failed(Exception):
    pass


def size_is(path, n):
    s = os.stat(path).st_size
    return None if s == n else "%s has %d bytes, expected %d" % (path, s, n)


def all_of(*errors):
    return next((e for e in errors if e), None)


# name: (mode, setup, warm-up, command, check). Strings run under bash with $M
# (the mount point) and $TARBALL set; lists run as they are, with {M}
# replaced. A warm-up of None for a read-only workload means the command. A
# setup "upper:$TARBALL" extracts the tarball into the upper directory before
# the mount instead of running anything after it.
WORKLOADS = {
    "statwalk": ("ro", None, None, ["find", "{M}", "-printf", "%s %m\\n"], None),
    "lsf": ("ro", None, None, ["ls", "-f", "{M}/wide"], None),
    "lsl": ("ro", None, None, ["ls", "-l", "{M}/wide"], None),
    "seqread": ("ro", None, None, ["dd", "if={M}/big/file1g", "of=/dev/null", "bs=1M", "status=none"], None),
    "randread": ("ro", None, None,
                 ["fio", "--name=r", "--filename={M}/big/file1g", "--readonly", "--rw=randread", "--bs=4k",
                  "--size=1g", "--io_size=64m", "--ioengine=psync", "--randseed=7", "--output=/dev/null",
                  # fio drops the file's cached pages first by default; through
                  # kernel overlayfs that reaches the lower file, through FUSE not.
                  "--invalidate=0"], None),
    # GNU tar reads nothing when it writes to /dev/null: give it a pipe.
    "tar": ("ro", None, None, 'tar cf - -C "$M" small | cat >/dev/null', None),
    # The same through a writable mount, as a container reads its image.
    "tarrw": ("rw", None, 'tar cf - -C "$M" small | cat >/dev/null',
              'tar cf - -C "$M" small | cat >/dev/null', None),
    "gitadd": ("rw", GIT[:-1] + ["init", "-q", "{M}/git"], 'tar cf - -C "$M" git | cat >/dev/null',
               GIT + ["{M}/git", "add", "-A"],
               lambda m: git_check(m, lambda out: None if out.count("\n") == 5000 else
                                   "index has %d entries, expected 5000" % out.count("\n"), "ls-files")),
    # status of a committed checkout: compares every file's stat with the index.
    "gitstatus": ("rw", 'cd "$M/git" && git init -q && git add -A && git commit -q -m lower',
                  GIT + ["{M}/git", "status", "--porcelain"], GIT + ["{M}/git", "status", "--porcelain"],
                  lambda m: git_check(m, lambda out: None if out == "" else "status not clean: " + out[:200],
                                      "status", "--porcelain")),
    "append1k": ("rw", None, 'cat "$M"/up/* >/dev/null', 'for f in "$M"/up/*; do printf x >>"$f"; done',
                 lambda m: all_of(size_is(m + "/up/u0000", 4097), size_is(m + "/up/u0999", 4097))),
    "append1g": ("rw", None, 'cat "$M/big/file1g" >/dev/null', 'printf x >>"$M/big/file1g"',
                 lambda m: size_is(m + "/big/file1g", (1 << 30) + 1)),
    "chmod1k": ("rw", None, 'stat "$M"/up/* >/dev/null', ["chmod", "600"] + ["{M}/up/" + n for n in UP],
                lambda m: None if all(os.stat(m + "/up/" + n).st_mode & 0o777 == 0o600 for n in UP[::111])
                else "modes not changed"),
    "extract": ("rw", None, 'cat "$TARBALL" >/dev/null', ["tar", "xf", "$TARBALL", "-C", "{M}"],
                lambda m: extract_check(m)),
    # The tree to remove is put into the upper directory before mounting
    # (extracting it through each mount would triple this workload's time).
    "rmextract": ("rw", "upper:$TARBALL", 'find "$M/extract" >/dev/null', ["rm", "-rf", "{M}/extract"],
                  lambda m: gone(m + "/extract")),
    "rmlower": ("rw", None, 'find "$M/tree/1" >/dev/null', ["rm", "-rf", "{M}/tree/1"],
                lambda m: all_of(gone(m + "/tree/1"), None if os.path.isdir(m + "/tree/2") else "tree/2 vanished")),
    "write1g": ("rw", None, None, ["dd", "if=/dev/zero", "of={M}/new1g", "bs=1M", "count=1024", "conv=fsync",
                                   "status=none"], lambda m: size_is(m + "/new1g", 1 << 30)),
}


def git_check(m, judge, *args):
    p = subprocess.run(GIT + [m + "/git", *args], env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    return "git %s failed: %s" % (args[0], p.stderr.strip()) if p.returncode else judge(p.stdout)


def extract_check(m):
    top = len(os.listdir(m + "/extract"))
    one = len(os.listdir(m + "/extract/x000"))
    return None if (top, one) == (200, 100) else "extract/ has %d dirs, extract/x000 %d files" % (top, one)


def gone(path):
    return "%s still exists" % path if os.path.lexists(path) else None


def argv(cmd, m):
    if isinstance(cmd, str):
        return ["bash", "-c", cmd]
    return [a.replace("{M}", m).replace("$TARBALL", os.environ["TARBALL"]) for a in cmd]


def run(cmd, m, what):
    """Runs cmd; returns its wall time. Raises Failed with its stderr."""
    env = dict(ENV, M=m)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv(cmd, m), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Failed("%s timed out after %d s: %s" % (what, TIMEOUT, shown(cmd, m)))
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        raise Failed("%s exited %d: %s\n    stderr: %s" % (what, p.returncode, shown(cmd, m),
                                                          "\n            ".join(err[:8] + err[-4:] if len(err) > 12
                                                                                 else err)))
    return elapsed


def shown(cmd, m):
    if isinstance(cmd, str):
        return "bash -c '%s' (M=%s)" % (cmd, m)
    return " ".join(argv(cmd, m)[:12]) + (" ..." if len(cmd) > 12 else "")


def server_pids(fs, m):
    """The processes serving the mount at m (none for kernel overlayfs)."""
    if fs == "kernel":
        return []
    p = subprocess.run(["pgrep", "-f", m], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split() if int(x) != os.getpid()]


def cpu_seconds(pids):
    """User + system CPU time the processes used so far (all their threads)."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mount_state(fs, m):
    """What the mount showed after a failure: mount table line, top entries, daemon."""
    lines = []
    with open("/proc/self/mountinfo") as f:
        mi = [l.split() for l in f]
    here = [l for l in mi if l[4] == m]
    lines.append("mounted: " + (" ".join(here[-1][4:]) if here else "no"))
    try:
        lines.append("ls: " + " ".join(sorted(os.listdir(m))[:12]))
    except OSError as e:
        lines.append("ls: " + str(e))
    if fs != "kernel":
        p = subprocess.run(["pgrep", "-af", m], capture_output=True, text=True)
        lines.append("server: " + (p.stdout.strip().replace("\n", "; ") or "none running"))
    upper = os.path.join(os.environ.get("RW", WORK), "upper-" + fs)
    if os.path.isdir(upper):
        p = subprocess.run(["find", upper, "-maxdepth", "2"], capture_output=True, text=True)
        entries = p.stdout.split()
        lines.append("upper (%d entries to depth 2): %s" % (len(entries), " ".join(entries[:8])))
    return "\n    ".join(lines)


def mount(fs, mode, tar=None):
    cmd = ["bash", *MOUNT, "mount", fs, mode] + ([tar] if tar else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if p.returncode:
        raise Failed("mount %s (%s) exited %d: %s" % (fs, mode, p.returncode, p.stderr.strip()))
    return os.path.join(WORK, "mnt-" + fs)


def umount(fs):
    p = subprocess.run(["bash", *MOUNT, "umount", fs], capture_output=True, text=True, timeout=TIMEOUT)
    if p.returncode:
        print("warning: unmounting %s: %s" % (fs, p.stderr.strip()), file=sys.stderr)


def measure(fs, name, temp):
    mode, setup, warm, cmd, check = WORKLOADS[name]
    preload = isinstance(setup, str) and setup.startswith("upper:")
    m = mount(fs, mode, os.environ["TARBALL"] if preload else None)
    try:
        if setup and not preload:
            run(setup, m, "setup")
        if temp == "cold":
            drop_caches()
        else:
            if warm or mode == "ro":
                run(warm or cmd, m, "warm-up")
            subprocess.run(["sync"], check=True)
        # The server's CPU time counts too: a FUSE server may trade it for
        # latency (strata polls while requests come densely).
        pids = server_pids(fs, m)
        cpu0 = cpu_seconds(pids)
        t = run(cmd, m, "command")
        cpu = cpu_seconds(pids) - cpu0
        err = check(m) if check else None
        if err:
            raise Failed("result check failed after %s: %s" % (shown(cmd, m), err))
        return t, cpu
    except Failed as e:
        raise Failed("%s\n    %s" % (e, mount_state(fs, m)))
    except OSError as e:
        raise Failed("%s: %s\n    %s" % (shown(cmd, m), e, mount_state(fs, m)))
    finally:
        umount(fs)


def count_entries(fs):
    """Entries in a fresh read-only mount: every filesystem must show the same tree."""
    m = mount(fs, "ro")
    try:
        return sum(len(d) + len(f) for _, d, f in os.walk(m))
    finally:
        umount(fs)


def fmt_ratio(t, base):
    if t is None:
        return "FAIL"
    if not base:
        return "%.3fs" % t
    return "%.2fx" % (t / base)


def main():
    os.makedirs(os.path.join(WORK, "home"), exist_ok=True)
    with open(os.path.join(WORK, "home", ".gitconfig"), "w") as f:
        f.write("[safe]\n\tdirectory = *\n[core]\n\tfsmonitor = false\n")
    only = os.environ["ONLY"].split()
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        sys.exit("unknown workloads: %s (known: %s)" % (" ".join(unknown), " ".join(WORKLOADS)))
    base = "kernel" if "kernel" in FSES else FSES[0]
    errors = []
    log = open(os.path.join(OUT, "errors.txt"), "w")

    def error(msg):
        errors.append(msg)
        print("  FAILED " + msg, file=sys.stderr, flush=True)
        log.write(msg + "\n\n")
        log.flush()

    counts = {}
    for fs in FSES:
        try:
            counts[fs] = count_entries(fs)
        except (Failed, OSError) as e:
            error("%s: entry count: %s" % (fs, e))
    print("entries seen in a read-only mount: " + ", ".join("%s %d" % kv for kv in counts.items()), flush=True)
    if len(set(counts.values())) > 1:
        error("the filesystems show different trees (entry counts %s)" % counts)

    medians = {}
    cpu_medians = {}
    started = time.time()
    for name in only:
        for temp in ("cold", "warm"):
            times = {fs: [] for fs in FSES}
            cpus = {fs: [] for fs in FSES}
            failed = set()
            t0 = time.time()
            for i in range(RUNS):
                # Each run starts with another filesystem: the first to read
                # the lower files after a while pays for the disk alone.
                for fs in FSES[i % len(FSES):] + FSES[:i % len(FSES)]:
                    if fs in failed:
                        continue
                    try:
                        t, cpu = measure(fs, name, temp)
                        times[fs].append(t)
                        cpus[fs].append(cpu)
                    except Failed as e:
                        failed.add(fs)
                        error("%s %s %s (run %d): %s" % (fs, name, temp, i + 1, e))
            results = [{"command": fs, "times": t, "median": statistics.median(t), "mean": statistics.mean(t),
                        "min": min(t), "max": max(t), "server_cpu": cpus[fs],
                        "server_cpu_median": statistics.median(cpus[fs])}
                       for fs, t in times.items() if t and fs not in failed]
            with open(os.path.join(OUT, "%s-%s.json" % (name, temp)), "w") as f:
                json.dump({"results": results, "failed": sorted(failed)}, f, indent=1)
            medians[name, temp] = {r["command"]: r["median"] for r in results}
            cpu_medians[name, temp] = {r["command"]: r["server_cpu_median"] for r in results if r["command"] != "kernel"}
            b = medians[name, temp].get(base)
            print("%-10s %-4s %5.0fs  " % (name, temp, time.time() - t0) +
                  "  ".join("%s %s" % (fs, "FAIL" if fs in failed else "%.3fs" % medians[name, temp][fs]
                                       + ("" if fs == base or not b else " (%.2fx)" % (medians[name, temp][fs] / b)))
                            for fs in FSES), flush=True)

    # Summary: the base filesystem's median in seconds, the others as ratios.
    others = [fs for fs in FSES if fs != base]
    w = max([15] + [len(fs) + 2 for fs in others])
    lines = ["Union filesystem benchmark: median of %d runs; %s in seconds, the others x %s" % (RUNS, base, base),
             "%-10s %-5s %10s" % ("workload", "cache", base) + "".join("%*s" % (w, fs) for fs in others)]
    for (name, temp), med in medians.items():
        b = med.get(base)
        lines.append("%-10s %-5s %10s" % (name, temp, "%.4f" % b if b else "FAIL") +
                     "".join("%*s" % (w, fmt_ratio(med.get(fs), b)) for fs in others))

    def table(title, values, columns, fmt):
        lines.extend(["", title, "%-10s %-5s" % ("workload", "cache") + "".join("%*s" % (w, fs) for fs in columns)])
        for (name, temp), med in values.items():
            lines.append("%-10s %-5s" % (name, temp) +
                         "".join("%*s" % (w, fmt % med[fs] if fs in med else "FAIL") for fs in columns))

    table("Medians in seconds", medians, FSES, "%.4f")
    table("Server CPU seconds (user + system of the serving process, medians)", cpu_medians,
          [fs for fs in FSES if fs != "kernel"], "%.2f")
    lines.append("")
    lines.append("entries per mount: " + ", ".join("%s %d" % kv for kv in counts.items()))
    lines.append("%d failures (details in errors.txt); %.0f s in all" % (len(errors), time.time() - started))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write(text)
    print("\n" + text)


if __name__ == "__main__":
    # Unwind on TERM as on Ctrl-C, so that the current mount is taken down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
