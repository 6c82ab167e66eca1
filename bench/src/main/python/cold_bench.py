#!/usr/bin/env python3
"""The cold path: bypass save and live update in a VMM process that did no warm-up, beside a warm
one and beside QEMU 7.2. The driver of bench/run-cold-bench.

Run it through bench/run-cold-bench, which builds, installs QEMU, makes the private copy of the
VMM's jars and the halting BIOS, and cleans up after it; the script's header says what is
measured. This file only measures and summarises:

    cold_bench.py CONFIG.json     (written by run-cold-bench)

Every process it starts is recorded and ended (SIGTERM, then SIGKILL) when it stops, whatever the
reason; the scratch directory on tmpfs belongs to the calling script, which removes it. The QEMU
parts follow bench/src/main/python/snapshot_bench.py (save) and migrate_bench.py (STOP->RESUME);
they are copied rather than imported because those drivers change on their own.
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

from benchlib import BenchError, JsonLines, fmt_num, loadavg, wait_for_quiet as _wait_for_quiet

CFG = json.load(open(sys.argv[1]))
OUT = CFG["out"]            # results directory (raw data, logs, summary)
WORK = CFG["work"]          # scratch directory on tmpfs: memory files, snapshots, sockets, consoles
JAVA = CFG["java"]
JAR = CFG["jar"]            # private copy of vmm-panama/target/vmm.jar (+ lib/ beside it)
BASE_JAR = CFG.get("base_jar") or None  # the same of an earlier revision (scripts/build-release), or none
BASE_REV = CFG.get("base_rev") or None
QEMU = CFG["qemu"]
BIOS = CFG["bios"]          # the halting BIOS (cli; hlt) for QEMU
SIZE = CFG["size"]
RUNS = int(CFG["runs"])
SETTLE = float(CFG["settle"])           # s after the first heartbeat (QEMU: after it is up)
WAIT_QUIET = int(CFG["wait_quiet"])     # s to wait at most for a quiet machine
QUIET_LOAD = float(CFG["quiet_load"])
GUEST_CMDLINE = "console=ttyS0 testguest.mem=16M testguest.hb=100"
# As ./vmm runs it, minus the AOT cache: the JDK's CDS archive only. Per VMM version: "" this one,
# "base_" the baseline revision.
JAVA_CMD = {"": [JAVA, "-XX:+UseSerialGC", "-Xshare:auto", "-jar", JAR]}
if BASE_JAR:
    JAVA_CMD["base_"] = [JAVA, "-XX:+UseSerialGC", "-Xshare:auto", "-jar", BASE_JAR]
VARIANTS = [(v, m) for v in JAVA_CMD for m in ("cold", "warm")]
MAX_BANDWIDTH = 1 << 40     # bytes/s for QEMU's save: "unlimited" (QEMU 7.2's default is 128 MiB/s)
LOG_LEVELS = "LocalMigration=debug,VmSnapshots=debug,Rehearsal=debug"
COLD = {"PANAMA_VMM_NO_REHEARSAL": "1", "PANAMA_VMM_LOG": LOG_LEVELS}
WARM = {"PANAMA_VMM_REHEARSAL": "sync", "PANAMA_VMM_LOG": LOG_LEVELS}

now = time.perf_counter


# ---------------------------------------------------------------------------------------------
# Processes: every one is recorded, and ended on the way out.

PROCS = []
LOG = open(os.path.join(OUT, "driver.log"), "a")


def log(msg, echo=False):
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    LOG.write(line + "\n")
    LOG.flush()
    if echo:
        print(line, flush=True)


def spawn(cmd, logname, env=None):
    path = os.path.join(OUT, "logs", logname)
    with open(path, "ab") as f:
        f.write(("$ " + " ".join(f"{k}={v}" for k, v in (env or {}).items()) + (" " if env else "") + " ".join(cmd) + "\n").encode())
        f.flush()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             env=dict(os.environ, **(env or {})))
    p.logpath = path
    PROCS.append(p)
    log(f"spawned {p.pid}: {' '.join(cmd)}")
    return p


def wait_exit(p, timeout=60):
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"process {p.pid} did not exit within {timeout} s; see {p.logpath}")


def end_all():
    for p in PROCS:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in PROCS:
        if p.poll() is None:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def on_signal(signum, frame):
    raise SystemExit(f"cold_bench: stopped by signal {signum}")


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)


SEQ = [0]


def fresh(name):
    SEQ[0] += 1
    return os.path.join(WORK, f"{SEQ[0]:04d}-{name}")


def rm(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass



def wait_path(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before creating {path}; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"{path} did not appear within {timeout} s; see {proc.logpath}")
        time.sleep(0.001)


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


HB_RE = re.compile(r"^hb 0 (\d+)$", re.M)


def heartbeats(console):
    text = read(console)
    if "CORRUPT" in text:
        raise BenchError(f"the test guest reported CORRUPT memory; see {console}")
    return [int(m) for m in HB_RE.findall(text[:text.rfind("\n") + 1])]


def wait_hb(console, proc, after=0, timeout=120):
    """Polls console every ms for a heartbeat `hb 0 N` with N > after; returns (perf_counter when seen, N)."""
    deadline = time.monotonic() + timeout
    while True:
        seqs = heartbeats(console)
        if seqs and seqs[-1] > after:
            return now(), seqs[-1]
        if proc.poll() is not None:
            raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before a heartbeat after {after} in {console}; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"no heartbeat after {after} in {console} within {timeout} s; see {proc.logpath}")
        time.sleep(0.001)


def wait_log(proc, regex, timeout=300):
    """Waits for a line matching regex in proc's log; returns the match."""
    r = re.compile(regex, re.M)
    deadline = time.monotonic() + timeout
    while True:
        m = r.search(read(proc.logpath))
        if m:
            return m
        if proc.poll() is not None:
            raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before logging /{regex}/; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"no /{regex}/ in {proc.logpath} within {timeout} s")
        time.sleep(0.01)


# The VMM's debug lines (PANAMA_VMM_LOG), each read after the byte offset of the request, so that
# the rehearsal's own saves and migrations (warm processes) are not taken for the measured one.
SAVED_RE = re.compile(r"DEBUG (?:\[[^\]]*\] )?(?:vm=\S+ )?VmSnapshots: saved .*: pause (\d+) us, state (\d+) us, RAM (\d+) us, commit (\d+) us")
SENT_RE = re.compile(r"DEBUG (?:\[[^\]]*\] )?(?:vm=\S+ )?LocalMigration: migration downtime (\d+) us: save (\d+) us, "
                     r"destination builds and resumes (\d+) us, confirmed after (\d+) us")
INCOMING_RE = re.compile(r"DEBUG (?:\[[^\]]*\] )?(?:vm=\S+ )?LocalMigration: incoming state: load (\d+) us, build (\d+) us, "
                         r"vCPU threads (\d+) us, resumed (\d+) us after the state arrived")
REHEARSED_RE = r"DEBUG (?:\[[^\]]*\] )?(?:vm=\S+ )?Rehearsal: rehearsal (done in (\d+) ms|failed.*)"


def log_phases(proc, offset, regex, names):
    text = read(proc.logpath)[offset:]
    m = regex.search(text)
    if not m:
        raise BenchError(f"no /{regex.pattern[:40]}.../ debug line in {proc.logpath}")
    return {n: int(v) for n, v in zip(names, m.groups())}


def log_size(proc):
    return len(read(proc.logpath))


# ---------------------------------------------------------------------------------------------
# Panama VMM

def panama_run(tag, ver, mode, mem, console, sock):
    """`vmm run`, up to SETTLE s after a heartbeat the VMM's state allows measuring from; returns (process, API client)."""
    p = spawn(JAVA_CMD[ver] + ["run", "--memory", SIZE, "--mem-path", mem, "--shared", "--api-socket", sock,
                          "--console", f"file:{console}", "--cmdline", GUEST_CMDLINE], f"{tag}.log",
              COLD if mode == "cold" else WARM)
    t_hb, seq = wait_hb(console, p, 0, 300)
    rehearsal_ms = None
    if mode == "warm":
        # The rehearsal runs on the main thread right after the VM starts, to its end.
        m = wait_log(p, REHEARSED_RE)
        if not m.group(2):
            raise BenchError(f"{tag}: the rehearsal failed, so the process is not warm: {m.group(0)}; see {p.logpath}")
        rehearsal_ms = int(m.group(2))
        t_hb, seq = wait_hb(console, p, heartbeats(console)[-1])
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    left = t_hb + SETTLE - now()
    if left > 0:
        time.sleep(left)
    return p, q, {"hb_seq": seq, "after_hb_ms": round((now() - t_hb) * 1e3, 1), "rehearsal_ms": rehearsal_ms}


def panama_save(tag, ver, mode):
    mem, console, sock, dest = fresh("panama.ram"), fresh("console.txt"), fresh("vmm.sock"), fresh("snapshot")
    try:
        p, q, r = panama_run(tag, ver, mode, mem, console, sock)
        offset = log_size(p)
        la = loadavg()[0]
        t0 = now()
        rep = q.cmd("snapshot", path=dest, **{"bypass-shared-memory": True})
        t1 = now()
        q.close()
        if wait_exit(p) != 0:   # the VM ends after saving (the default), and so does the process
            raise BenchError(f"{tag}: the VMM exited with {p.returncode}; see {p.logpath}")
        heartbeats(console)
        if rep.get("ram-blocks-by-reference", 0) < 1 or rep.get("ram-bytes-written", 1) != 0:
            raise BenchError(f"{tag}: not a bypass save: {rep}")
        r.update(wall_ms=(t1 - t0) * 1e3, duration_ms=rep["duration-ms"], load1=la,
                 phases_us=log_phases(p, offset, SAVED_RE, ("pause", "state", "ram", "commit")))
        log(f"{tag}: {r}")
        return r
    finally:
        for f in (mem, console):
            rm(f)
        subprocess.run(["rm", "-rf", dest])


def panama_migrate(tag, ver, mode):
    mem, c0, c1, a0, a1, mig = (fresh("panama.ram"), fresh("console0.txt"), fresh("console1.txt"), fresh("api0.sock"),
                                fresh("api1.sock"), fresh("mig.sock"))
    env = COLD if mode == "cold" else WARM
    try:
        # The destination first: it waits on its socket (warm: only once its rehearsal is done).
        dst = spawn(JAVA_CMD[ver] + ["incoming", f"unix:{mig}", "--api-socket", a1, "--console", f"file:{c1}"],
                    f"{tag}-incoming.log", env)
        wait_path(mig, dst)
        src, q, r = panama_run(f"{tag}-run", ver, mode, mem, c0, a0)
        if dst.poll() is not None:
            raise BenchError(f"{tag}: the destination exited ({dst.returncode}); see {dst.logpath}")
        off_src, off_dst = log_size(src), log_size(dst)
        la = loadavg()[0]
        t0 = now()
        rep = q.cmd("migrate", uri=f"unix:{mig}")
        t1 = now()
        q.close()
        last_src = max(heartbeats(c0), default=0)
        wait_exit(src)  # the source exits once the destination runs its guest
        _, first_dst = wait_hb(c1, dst, 0, 30)
        heartbeats(c0)
        qd = JsonLines(a1, dst)
        qd.cmd("qmp_capabilities")
        qd.cmd("quit", check=False)
        qd.close()
        wait_exit(dst, 30)
        r.update(downtime_ms=rep["downtime-us"] / 1e3, confirmed_ms=rep["confirmed-ms"], total_ms=rep["total-ms"],
                 bytes_sent=rep["bytes-sent"], api_ms=(t1 - t0) * 1e3, load1=la, hb_src_last=last_src, hb_dst_first=first_dst,
                 src_us=log_phases(src, off_src, SENT_RE, ("downtime", "save", "dst_builds_resumes", "confirmed_after")),
                 save_us=log_phases(src, off_src, SAVED_RE, ("pause", "state", "ram", "commit")),
                 dst_us=log_phases(dst, off_dst, INCOMING_RE, ("load", "build", "vcpu_threads", "resumed")))
        # Both clocks are the host's CLOCK_MONOTONIC: the source's "destination builds and resumes"
        # minus the destination's own "state arrived -> resumed" is the State message's way over.
        r["transit_us"] = {"transit": r["src_us"]["dst_builds_resumes"] - r["dst_us"]["resumed"]}
        log(f"{tag}: {r}")
        return r
    finally:
        for f in (mem, c0, c1):
            rm(f)


# ---------------------------------------------------------------------------------------------
# QEMU (as snapshot_bench.py and migrate_bench.py run it)

def qemu_cmd(mem, sock, incoming):
    cmd = [QEMU, "-accel", "kvm", "-machine", "q35", "-m", SIZE,
           "-object", f"memory-backend-file,id=mem,size={SIZE},mem-path={mem},share=on",
           "-machine", "memory-backend=mem", "-bios", BIOS,
           "-nographic", "-nodefaults", "-serial", "none", "-qmp", f"unix:{sock},server,nowait"]
    if incoming:
        cmd += ["-incoming", "defer"]
    return cmd


def qemu_up(tag, mem, incoming):
    sock = fresh("qmp.sock")
    p = spawn(qemu_cmd(mem, sock, incoming), f"{tag}.log")
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    return p, q


def ev_time(e):
    return e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6


def qemu_save(tag):
    mem, dest = fresh("qemu.ram"), fresh("qemu.mig")
    try:
        p, q = qemu_up(tag, mem, False)
        t_up = now()
        if not q.cmd("query-status")["running"]:
            raise BenchError("QEMU is not running")
        q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True},
                                                        {"capability": "events", "state": True}])
        q.cmd("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
        time.sleep(max(0.0, t_up + SETTLE - now()))
        la = loadavg()[0]
        t0 = now()
        q.cmd("migrate", uri=f"exec:cat > {dest}")
        t1, ev = q.wait_event(lambda e: e["event"] == "MIGRATION" and e["data"]["status"] in ("completed", "failed", "cancelled"),
                              120) or (None, None)
        if ev is None or ev["data"]["status"] != "completed":
            raise BenchError(f"{tag}: QEMU's save did not complete: {ev}; see {p.logpath}")
        info = q.cmd("query-migrate")
        deadline = time.monotonic() + 2
        while not info.get("total-time") and time.monotonic() < deadline:
            time.sleep(0.005)  # QEMU sends "completed" a moment before it stores total-time
            info = q.cmd("query-migrate")
        q.cmd("quit")
        q.close()
        wait_exit(p)
        r = {"wall_ms": (t1 - t0) * 1e3, "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
             "file_bytes": os.path.getsize(dest), "load1": la}
        log(f"{tag}: {r}")
        return r
    finally:
        rm(mem)
        rm(dest)


def qemu_migrate(tag):
    mem, mig = fresh("qemu.ram"), fresh("qemu-mig.sock")
    try:
        dst, qd = qemu_up(f"{tag}-incoming", mem, True)
        qd.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
        qd.cmd("migrate-incoming", uri=f"unix:{mig}")
        wait_path(mig, dst)
        src, q = qemu_up(f"{tag}-run", mem, False)
        t_up = now()
        q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
        time.sleep(max(0.0, t_up + SETTLE - now()))
        la = loadavg()[0]
        t0 = time.monotonic()
        q.cmd("migrate", uri=f"unix:{mig}")
        while True:
            m = q.cmd("query-migrate")
            if m.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - t0 > 60:
                raise BenchError(f"{tag}: QEMU's migration did not complete in 60 s: {m}")
            time.sleep(0.002)
        if m["status"] != "completed":
            raise BenchError(f"{tag}: QEMU's migration: {m}")
        stop_ev = (q.wait_event("STOP", 5) or (None, None))[1]
        resume_ev = (qd.wait_event("RESUME", 10) or (None, None))[1]
        if not (stop_ev and resume_ev):
            raise BenchError(f"{tag}: no STOP ({stop_ev}) or RESUME ({resume_ev}) event")
        if qd.cmd("query-status").get("status") != "running":
            raise BenchError(f"{tag}: QEMU's destination is not running")
        for proc, client in ((src, q), (dst, qd)):
            client.cmd("quit", check=False)
            client.close()
            wait_exit(proc)
        r = {"stop_to_resume_ms": (ev_time(resume_ev) - ev_time(stop_ev)) * 1e3, "downtime_ms": m.get("downtime"),
             "total_ms": m.get("total-time"), "setup_ms": m.get("setup-time"), "load1": la}
        log(f"{tag}: {r}")
        return r
    finally:
        rm(mem)


# ---------------------------------------------------------------------------------------------
# Summary

def med(xs):
    return statistics.median(xs) if xs else float("nan")


fmt = fmt_num


def mr(xs):
    """median [min-max]"""
    return f"{fmt(med(xs))} [{fmt(min(xs))}-{fmt(max(xs))}]" if xs else "-"


def summary(R):
    lines = []
    p = lines.append
    runs = len(R["qemu_save"])
    qs = [r["wall_ms"] for r in R["qemu_save"]]
    qsr = [r["stop_to_resume_ms"] for r in R["qemu_migrate"]]
    qd = [r["downtime_ms"] for r in R["qemu_migrate"]]
    variants = [(v, m) for v, m in VARIANTS if R.get(f"save_{v}{m}")]
    label = {v + m: f"{'this VMM' if not v else BASE_REV} {m}" for v, m in variants}
    keys = [v + m for v, m in variants]

    def ratio(xs, ys):
        rs = [a / b for a, b in zip(xs, ys) if b]
        return f"{med(rs):.2f}x" if rs else "-"

    p(f"cold path, {SIZE} guest RAM in a shared file on /dev/shm, {runs} run(s); saves and migrations {SETTLE:g} s after the"
      f" first heartbeat (warm: after the rehearsal, then a new heartbeat; QEMU: after it is up); VMM at git {R['commit']}"
      + (f", baseline {BASE_REV}" if BASE_REV else ""))
    p(f"load average before {R['load_before']}, after {R.get('load_after')}; {R['quiet_note']}")
    p("ms, median [min-max]; (x QEMU) = the median of the per-run ratios to QEMU's run of the same round")
    p("")
    p("| | QEMU | " + " | ".join(label[k] for k in keys) + " |")
    p("|---|---|" + "---|" * len(keys))
    save = {k: [r["wall_ms"] for r in R[f"save_{k}"]] for k in keys}
    down = {k: [r["downtime_ms"] for r in R[f"migrate_{k}"]] for k in keys}
    p(f"| bypass save (QEMU: x-ignore-shared save), request to reply | {mr(qs)} | "
      + " | ".join(f"{mr(save[k])} ({ratio(save[k], qs)})" for k in keys) + " |")
    p(f"| live update downtime (QEMU: STOP->RESUME) | {mr(qsr)} | "
      + " | ".join(f"{mr(down[k])} ({ratio(down[k], qsr)})" for k in keys) + " |")
    p(f"| (QEMU's own downtime, and the ratio to it) | {mr(qd)} | " + " | ".join(f"({ratio(down[k], qd)})" for k in keys) + " |")
    p("| save: the VMM's duration-ms | | " + " | ".join(mr([r["duration_ms"] for r in R[f"save_{k}"]]) for k in keys) + " |")
    p("| live update: confirmed-ms | | " + " | ".join(mr([r["confirmed_ms"] for r in R[f"migrate_{k}"]]) for k in keys) + " |")
    if BASE_REV:
        for m in ("cold", "warm"):
            if m in keys and "base_" + m in keys:
                p(f"{m}: {BASE_REV} / this VMM, per run (median): bypass save {ratio(save['base_' + m], save[m])},"
                  f" live-update downtime {ratio(down['base_' + m], down[m])}")
    p("")
    p("phases, ms (the VMM's debug log), median [min-max]")
    p("| phase | " + " | ".join(label[k] for k in keys) + " |")
    p("|---|" + "---|" * len(keys))

    def ph(key, sub, field):
        return [r[sub][field] / 1e3 for r in R[key]]

    rows = [("bypass save: pause", "save", "phases_us", "pause"), ("bypass save: state", "save", "phases_us", "state"),
            ("bypass save: RAM (by reference)", "save", "phases_us", "ram"), ("bypass save: commit", "save", "phases_us", "commit"),
            ("live update, source: save", "migrate", "src_us", "save"),
            ("  of it: pause", "migrate", "save_us", "pause"), ("  of it: state", "migrate", "save_us", "state"),
            ("  of it: RAM", "migrate", "save_us", "ram"), ("  of it: commit", "migrate", "save_us", "commit"),
            ("live update, source: destination builds and resumes", "migrate", "src_us", "dst_builds_resumes"),
            ("  state message: source saved -> destination has it", "migrate", "transit_us", "transit"),
            ("  destination: load (state arrived -> loaded)", "migrate", "dst_us", "load"),
            ("  destination: build", "migrate", "dst_us", "build"),
            ("  destination: vCPU threads", "migrate", "dst_us", "vcpu_threads"),
            ("  destination: state arrived -> resumed", "migrate", "dst_us", "resumed"),
            ("live update downtime (source's log)", "migrate", "src_us", "downtime"),
            ("live update, source: confirmed after resume", "migrate", "src_us", "confirmed_after")]
    for text, kind, sub, field in rows:
        p(f"| {text} | " + " | ".join(mr(ph(f"{kind}_{k}", sub, field)) for k in keys) + " |")
    p("")
    for k in keys:
        reh = [r["rehearsal_ms"] for r in R[f"save_{k}"] + R[f"migrate_{k}"] if r.get("rehearsal_ms") is not None]
        if reh:
            p(f"{label[k]}: the rehearsal (sync, normal priority) took {mr(reh)} ms")
    p("every run, in order (ms):")
    p(f"  QEMU save {' '.join(fmt(x) for x in qs)}; QEMU STOP->RESUME {' '.join(fmt(x) for x in qsr)}")
    for k in keys:
        p(f"  {label[k]}: save {' '.join(fmt(x) for x in save[k])}; live-update downtime {' '.join(fmt(x) for x in down[k])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def wait_for_quiet():
    return _wait_for_quiet(WAIT_QUIET, QUIET_LOAD, log)


def main():
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    R = {"size": SIZE, "runs": RUNS, "settle_s": SETTLE, "commit": CFG["commit"], "base_rev": BASE_REV,
         "cmdline": GUEST_CMDLINE, "java": JAVA_CMD[""][:-2], "qemu_save": [], "qemu_migrate": []}
    for v, m in VARIANTS:
        R[f"save_{v}{m}"], R[f"migrate_{v}{m}"] = [], []
    R["quiet_note"] = wait_for_quiet()
    print(f"== {R['quiet_note']}", flush=True)
    R["load_before"] = loadavg()
    R["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.monotonic()
    try:
        for i in range(RUNS):
            # Which variant comes first rotates from run to run, so that drift does not favour one.
            k = i % len(VARIANTS)
            order = VARIANTS[k:] + VARIANTS[:k]
            names = ", ".join(f"{v}{m}" for v, m in order)
            log(f"== run {i + 1} of {RUNS}: QEMU save, Panama saves ({names}), QEMU live update, Panama live updates ({names})",
                echo=True)
            R["qemu_save"].append(dict(qemu_save(f"{i}-qemu-save"), run=i))
            for v, m in order:
                R[f"save_{v}{m}"].append(dict(panama_save(f"{i}-save-{v}{m}", v, m), run=i))
            R["qemu_migrate"].append(dict(qemu_migrate(f"{i}-qemu-migrate"), run=i))
            for v, m in order:
                R[f"migrate_{v}{m}"].append(dict(panama_migrate(f"{i}-migrate-{v}{m}", v, m), run=i))
        R["load_after"] = loadavg()
        R["measuring_s"] = round(time.monotonic() - t_start)
    finally:
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(R, f, indent=1)
    text = summary(R) + f"\nmeasuring took {R['measuring_s']} s\n"
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write(text)
    print()
    print(text)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        log(f"failed: {e}")
        print(f"cold_bench: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_all()
