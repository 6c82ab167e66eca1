#!/usr/bin/env python3
"""Save/restore side by side: Panama VMM against QEMU. The driver of bench/run-snapshot-bench.

Run it through bench/run-snapshot-bench, which builds, installs QEMU, makes the private copy of
the VMM's jars and the halting BIOS, and cleans up after it; the script's header says what is
measured. This file only measures and summarises:

    snapshot_bench.py CONFIG.json     (written by run-snapshot-bench)

Every process it starts is recorded and ended (SIGTERM, then SIGKILL) when it stops, whatever
the reason; the scratch directory on tmpfs belongs to the calling script, which removes it.
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

from benchlib import BenchError, FileTail, JsonLines

CFG = json.load(open(sys.argv[1]))
OUT = CFG["out"]            # results directory (raw data, logs, summary)
WORK = CFG["work"]          # scratch directory on tmpfs: memory files, snapshots, sockets
JAVA = CFG["java"]
JAR = CFG["jar"]            # private copy of vmm-panama/target/vmm.jar (+ lib/ beside it)
AOT = CFG["aot"]            # the AOT cache file
FLOOR_CP = CFG["floor_cp"]  # classpath of bench's JvmFloor (its jar + jackson-core's)
FLOOR_AOT = CFG["floor_aot"]  # JvmFloor's own AOT cache (made by the calling script)
QEMU = CFG["qemu"]
BIOS = CFG["bios"]
SIZES = CFG["sizes"]        # e.g. ["256M", "1G", "4G"]
RUNS = int(CFG["runs"])
SETTLE = float(CFG.get("settle", 0.3))   # seconds a fresh VM runs before it is saved
# seconds a "settled" fresh VM runs before its save: long enough for the VMM's background rehearsal
# (docs/architecture.md, "Warm paths") to have finished, as for a VM saved at any later moment
# run and restore warm up only when asked (issue 15); these rows measure warm VMM processes, as before.
os.environ.setdefault("PANAMA_VMM_REHEARSAL", "background")
SETTLED = float(os.environ.get("SNAPBENCH_SETTLED", "5"))
GUEST_CMDLINE = "console=ttyS0 testguest.mem=16M testguest.hb=100"
JAVA_FLAGS = ["-XX:+UseSerialGC"]  # as ./vmm (which adds -Xshare:auto)
MAX_BANDWIDTH = 1 << 40     # bytes/s for QEMU's migration: "unlimited" (QEMU 7.2's default is 128 MiB/s)

now = time.perf_counter

# This machine's memory comes back from its host lazily: the kernel reports freed memory to the
# host (virtio-balloon free page reporting, 2 MiB blocks, ~2 s after the free) and the host drops
# it, so a page touched later costs a fault in the host too. Measured: cat of a 2 GiB file to a
# new tmpfs file took 1.2-1.4 s right after a 2 GiB file was removed and 3.5 s when 6 s had
# passed. A full save writes a new file the size of RAM, so each one (QEMU's, cat's, Panama's)
# starts at least this long after the last large file was removed: all of them then write into
# memory the host has taken back, instead of whoever comes first after a removal getting it cheap.
MEMORY_QUIET = float(os.environ.get("SNAPBENCH_MEMORY_QUIET", "5"))
LAST_LARGE_FREE = [0.0]


# ---------------------------------------------------------------------------------------------
# Processes: every one is recorded, and ended on the way out.

PROCS = []
LOG = open(os.path.join(OUT, "driver.log"), "a")


def log(msg):
    LOG.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    LOG.flush()


def spawn(cmd, logname):
    """Starts cmd; returns (process, perf_counter right before the fork)."""
    path = os.path.join(OUT, "logs", logname)
    with open(path, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        t0 = now()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    p.logpath = path
    PROCS.append(p)
    log(f"spawned {p.pid}: {' '.join(cmd)}")
    return p, t0


def wait_exit(p, timeout=60, expect=0):
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"process {p.pid} did not exit within {timeout} s; see {p.logpath}")
    if expect is not None and rc != expect:
        raise BenchError(f"process {p.pid} exited with {rc}; see {p.logpath}")
    return rc


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
    raise SystemExit(f"snapshot_bench: stopped by signal {signum}")


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)


def rm_large(path):
    """Removes a file the size of RAM (a full save, a copy) and notes when, for quiet_memory."""
    rm(path)
    LAST_LARGE_FREE[0] = time.monotonic()


def quiet_memory():
    """Waits until MEMORY_QUIET seconds have passed since the last large removal (see MEMORY_QUIET)."""
    left = LAST_LARGE_FREE[0] + MEMORY_QUIET - time.monotonic()
    if left > 0:
        time.sleep(left)


def rm(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------------------
# QMP (QEMU) and the VMM's QMP-shaped API: benchlib.JsonLines.

class Console:
    """Follows a console file (--console file:PATH) and waits for lines."""

    def __init__(self, path, prefix=""):
        """prefix: the unfinished last line of the console before a save; the restored guest goes
        on with the rest of that line (a save can land in the middle of one)."""
        self.path = path
        self.file = FileTail(path)
        self.text = prefix
        self.scanned = 0

    def _poll(self):
        data = self.file.read()
        if data:
            self.text += data.decode(errors="replace")

    def wait(self, regex, timeout, proc):
        """Waits for a whole line matching regex after the last match; returns (time seen, match)."""
        r = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            self._poll()
            while True:
                nl = self.text.find("\n", self.scanned)
                if nl < 0:
                    break
                line = self.text[self.scanned:nl]
                self.scanned = nl + 1
                m = r.fullmatch(line)
                if m:
                    return now(), m
            if proc.poll() is not None:
                raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before its console showed /{regex}/; see {self.path}")
            if time.monotonic() > deadline:
                raise BenchError(f"no /{regex}/ on {self.path} within {timeout} s")
            time.sleep(0.001)

    def last_hb(self):
        """The last heartbeat on a whole line."""
        self._poll()
        whole = self.text[:self.text.rfind("\n") + 1]
        seqs = [int(m.group(1)) for m in re.finditer(r"^hb 0 (\d+)$", whole, re.M)]
        return seqs[-1] if seqs else None

    def tail(self):
        """The unfinished last line."""
        self._poll()
        return self.text[self.text.rfind("\n") + 1:]

    def check(self):
        self._poll()
        if "CORRUPT" in self.text:
            raise BenchError(f"the test guest reported CORRUPT memory; see {self.path}")


# ---------------------------------------------------------------------------------------------
# The memory file: the same non-zero bytes for both VMMs (1 MiB of random bytes, repeated).

def fill(path, size_bytes):
    chunk = memoryview(os.urandom(1 << 20) * 64)
    t0 = now()
    with open(path, "wb") as f:
        left = size_bytes
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    log(f"filled {path} ({size_bytes} bytes) in {now() - t0:.1f} s")


def size_bytes(size):
    m = re.fullmatch(r"(\d+)([MG])", size)
    return int(m.group(1)) << (20 if m.group(2) == "M" else 30)


SEQ = [0]


def fresh(name):
    SEQ[0] += 1
    return os.path.join(WORK, f"{SEQ[0]:04d}-{name}")


# ---------------------------------------------------------------------------------------------
# QEMU

def qemu_cmd(size, mem, sock, incoming):
    cmd = [QEMU, "-accel", "kvm", "-machine", "q35", "-m", size,
           "-object", f"memory-backend-file,id=mem,size={size},mem-path={mem},share=on",
           "-machine", "memory-backend=mem", "-bios", BIOS,
           "-nographic", "-nodefaults", "-serial", "none", "-qmp", f"unix:{sock},server,nowait"]
    if incoming:
        cmd += ["-incoming", "defer"]
    return cmd


def qemu_caps(q, ignore_shared):
    q.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "x-ignore-shared", "state": ignore_shared},
        {"capability": "events", "state": True}])


def qemu_save(size, mem, ignore_shared, dest, tag):
    sock = fresh("qemu.sock")
    p, _ = spawn(qemu_cmd(size, mem, sock, False), f"{tag}.log")
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    if not q.cmd("query-status")["running"]:
        raise BenchError("QEMU is not running")
    qemu_caps(q, ignore_shared)
    q.cmd("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
    time.sleep(SETTLE)
    if not ignore_shared:
        quiet_memory()
    t0 = now()
    q.cmd("migrate", uri=f"exec:cat > {dest}")
    t1, ev = q.wait_event(lambda e: e["event"] == "MIGRATION" and e["data"]["status"] in ("completed", "failed", "cancelled")) \
        or (None, None)
    if ev is None:
        raise BenchError(f"{tag}: QEMU's migration did not end within 600 s")
    if ev["data"]["status"] != "completed":
        raise BenchError(f"QEMU migration {ev['data']['status']}; see {p.logpath}")
    info = q.cmd("query-migrate")
    deadline = time.monotonic() + 2
    while not info.get("total-time") and time.monotonic() < deadline:
        # QEMU sends the "completed" event a moment before it stores total-time (0 until then)
        time.sleep(0.005)
        info = q.cmd("query-migrate")
    q.cmd("quit")
    q.close()
    wait_exit(p)
    return {"wall_ms": (t1 - t0) * 1e3, "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
            "setup_ms": info.get("setup-time"), "ram_transferred": info.get("ram", {}).get("transferred"),
            "file_bytes": os.path.getsize(dest)}


def qemu_restore(size, mem, src, tag):
    sock = fresh("qemu.sock")
    p, t0 = spawn(qemu_cmd(size, mem, sock, True), f"{tag}.log")
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    qemu_caps(q, True)
    q.cmd("migrate-incoming", uri=f"exec:cat {src}")
    t1, _ = q.wait_event("RESUME") or (None, None)
    if t1 is None:
        raise BenchError(f"{tag}: QEMU did not resume within 600 s")
    if not q.cmd("query-status")["running"]:
        raise BenchError("restored QEMU is not running")
    q.cmd("quit")
    q.close()
    wait_exit(p)
    return {"running_ms": (t1 - t0) * 1e3, "connect_ms": (q.connected - t0) * 1e3}


def qemu_run(size, mem, i, rnd, results):
    """One QEMU run: x-ignore-shared save, restore from it, full save; each in a new process."""
    tag = f"qemu-{size}-{i}-{rnd}"
    mig = fresh("qemu-shared.mig")
    r = qemu_save(size, mem, True, mig, f"{tag}-save-shared")
    results["qemu_save_shared"].append(dict(r, run=i, rnd=rnd))
    r = qemu_restore(size, mem, mig, f"{tag}-restore-shared")
    results["qemu_restore_shared"].append(dict(r, run=i, rnd=rnd))
    rm(mig)
    mig = fresh("qemu-full.mig")
    r = qemu_save(size, mem, False, mig, f"{tag}-save-full")
    results["qemu_save_full"].append(dict(r, run=i, rnd=rnd))
    rm_large(mig)
    log(f"{tag}: done")


def floor_run(mem, i, results):
    """The floor for a full save here: the memory file copied to a new tmpfs file with cat (what
    QEMU's exec:cat does at its end). New tmpfs pages are expensive on this machine and their cost
    drifts by 2x within minutes, so it is measured in every run."""
    copy = fresh("copy")
    quiet_memory()
    t0 = now()
    subprocess.run(f"cat {mem} > {copy}", shell=True, check=True)
    results["cat_copy"].append({"wall_ms": (now() - t0) * 1e3, "run": i})
    rm_large(copy)


def jvm_floor_run(i, results):
    """The least a Java 25 process does before it could restore a VM (bench's JvmFloor: JVM start,
    one FFM downcall linked and called, jackson-core reading snapshot metadata, a Unix socket
    listening), with its own AOT cache: spawn -> its "ready" line. Nothing of Panama VMM runs."""
    sock = fresh("floor.sock")
    cmd = [JAVA] + JAVA_FLAGS + ["--enable-native-access=ALL-UNNAMED", f"-XX:AOTCache={FLOOR_AOT}", "-XX:AOTMode=on",
                                 "-cp", FLOOR_CP, "dev.panamavmm.bench.JvmFloor", sock]
    t0 = now()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    PROCS.append(p)
    line = p.stdout.readline()
    t1 = now()
    p.stdout.close()
    p.logpath = os.path.join(OUT, "driver.log")
    wait_exit(p)
    if line.strip() != b"ready":
        raise BenchError(f"JvmFloor printed {line[:200]!r} instead of ready: {' '.join(cmd)}")
    results["jvm_floor"].append({"ready_ms": (t1 - t0) * 1e3, "run": i})


# ---------------------------------------------------------------------------------------------
# Panama VMM

def java_cmd(aot=None):
    """aot: None (no cache), "use" or "train"."""
    flags = list(JAVA_FLAGS)
    if aot == "use":  # AOTMode=on: fail rather than run on silently without the cache
        flags += [f"-XX:AOTCache={AOT}", "-XX:AOTMode=on"]
    elif aot == "train":
        flags.append(f"-XX:AOTCacheOutput={AOT}")
    else:
        flags.append("-Xshare:auto")  # the JDK's default CDS archive; -Xshare cannot go with AOTCache
    return [JAVA] + flags + ["-jar", JAR]


def panama_boot(size, mem, tag):
    sock, console = fresh("vmm.sock"), fresh("console.txt")
    p, _ = spawn(java_cmd() + ["run", "--memory", size, "--mem-path", mem, "--shared", "--api-socket", sock,
                               "--console", f"file:{console}", "--cmdline", GUEST_CMDLINE], f"{tag}.log")
    c = Console(console)
    c.wait(r"ready", 300, p)
    c.wait(r"hb 0 1", 30, p)
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    time.sleep(SETTLE)
    return p, q, c


def panama_save(p, q, c, bypass, dest):
    t0 = now()
    r = q.cmd("snapshot", path=dest, **{"bypass-shared-memory": bypass})
    t1 = now()
    q.close()
    wait_exit(p)  # the VM ends after saving (the default), and so does the process
    c.check()
    return {"wall_ms": (t1 - t0) * 1e3, "duration_ms": r["duration-ms"], "ram_written": r["ram-bytes-written"],
            "by_reference": r["ram-blocks-by-reference"], "last_hb": c.last_hb(), "tail": c.tail()}


def panama_restore(snapshot, aot, tag, last_hb, tail=""):
    sock, console = fresh("vmm.sock"), fresh("console.txt")
    p, t0 = spawn(java_cmd(aot) + ["restore", snapshot, "--paused", "--api-socket", sock, "--console", f"file:{console}"],
                  f"{tag}.log")
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    q.cmd("cont")
    t_run = now()
    c = Console(console, tail)
    t_hb, m = c.wait(r"hb 0 (\d+)", 30, p)
    seq = int(m.group(1))
    r = {"connect_ms": (q.connected - t0) * 1e3, "running_ms": (t_run - t0) * 1e3, "hb_ms": (t_hb - t0) * 1e3,
         "hb_seq": seq, "continuous": last_hb is None or seq == last_hb + 1, "tail_before": tail,
         "console_start": c.text[len(tail):len(tail) + 24]}
    if not r["continuous"]:
        log(f"{tag}: heartbeat {seq} after restore, expected {last_hb + 1}")
    return p, q, c, r


def panama_run(size, mem, i, results):
    tag = f"panama-{size}-{i}"
    # Fresh VM -> bypass save -> restore X -> bypass save -> restore Y -> bypass save (X, Y: without
    # and with the AOT cache, alternating which comes first). Every save is its process's first.
    p, q, c = panama_boot(size, mem, f"{tag}-run")
    snap = fresh("panama-bypass")
    s = panama_save(p, q, c, True, snap)
    s["saver"] = "run"
    results["panama_save_bypass"].append(dict(s, run=i))
    last = s["last_hb"]
    for k, name in enumerate(["jit", "aot"] if i % 2 == 0 else ["aot", "jit"]):
        p, q, c, r = panama_restore(snap, "use" if name == "aot" else None, f"{tag}-restore-{name}", last, s["tail"])
        r["order"] = k
        results[f"panama_restore_{name}"].append(dict(r, run=i))
        nxt = fresh("panama-bypass")
        s = panama_save(p, q, c, True, nxt)
        s["saver"] = f"restored-{name}"
        results["panama_save_bypass"].append(dict(s, run=i))
        last = s["last_hb"]
        rm(snap)
        snap = nxt
    rm(snap)
    # Fresh VM -> stop, cont, stop, cont -> bypass save: what the first pause of a process costs.
    p, q, c = panama_boot(size, mem, f"{tag}-run-warm")
    t = [now()]
    for cmd in ("stop", "cont", "stop", "cont"):
        q.cmd(cmd)
        t.append(now())
    time.sleep(SETTLE)
    snap = fresh("panama-bypass")
    s = panama_save(p, q, c, True, snap)
    s["saver"] = "run-after-stop-cont"
    s["first_stop_ms"], s["second_stop_ms"] = (t[1] - t[0]) * 1e3, (t[3] - t[2]) * 1e3
    results["panama_save_bypass"].append(dict(s, run=i))
    rm(snap)
    # Fresh VM that ran SETTLED s -> bypass save: the first save of a process whose rehearsal is done.
    p, q, c = panama_boot(size, mem, f"{tag}-run-settled")
    time.sleep(max(0.0, SETTLED - SETTLE))
    snap = fresh("panama-bypass")
    s = panama_save(p, q, c, True, snap)
    s["saver"] = "run-settled"
    results["panama_save_bypass"].append(dict(s, run=i))
    rm(snap)
    # Fresh VM -> full save (no bypass).
    p, q, c = panama_boot(size, mem, f"{tag}-run-full")
    snap = fresh("panama-full")
    quiet_memory()
    s = panama_save(p, q, c, False, snap)
    st = os.stat(os.path.join(snap, "snapshot.pvm"))
    s["file_bytes"], s["file_allocated_bytes"] = st.st_size, st.st_blocks * 512
    results["panama_save_full"].append(dict(s, run=i))
    rm_large(snap)
    log(f"{tag}: done")


def aot_train():
    """One restore under -XX:AOTCacheOutput: restore, cont, first heartbeat, bypass save, exit.
    PANAMA_VMM_REHEARSAL=sync: the VMM's save/restore rehearsal finishes inside the training run."""
    os.environ["PANAMA_VMM_REHEARSAL"] = "sync"
    try:
        _aot_train()
    finally:
        os.environ["PANAMA_VMM_REHEARSAL"] = "background"


def _aot_train():
    mem = fresh("train.ram")
    fill(mem, size_bytes("256M"))
    p, q, c = panama_boot("256M", mem, "aot-train-run")
    snap = fresh("train-snap")
    s = panama_save(p, q, c, True, snap)
    rm(AOT)
    p, q, c, r = panama_restore(snap, "train", "aot-train-restore", s["last_hb"], s["tail"])
    panama_save(p, q, c, True, fresh("train-snap2"))  # waits for the exit, which writes the cache
    if not os.path.exists(AOT):
        raise BenchError(f"the training run wrote no AOT cache {AOT}; see {OUT}/logs/aot-train-restore.log")
    rm(mem)


# ---------------------------------------------------------------------------------------------
# Summary

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def fmt_list(xs):
    return "[" + " ".join(fmt(x) for x in xs) + "]"


def summary(all_results, env):
    lines, notes, verdicts, table = [], [], [], []
    p = lines.append
    bypass = {}
    for size in SIZES:
        R = all_results[size]
        gib = size_bytes(size) / (1 << 30)

        def qemu(key, field, note=True):
            """Per run: the faster of QEMU's run just before and just after Panama's (drift only adds time)."""
            before = [next(r[field] for r in R[key] if r["run"] == i and r["rnd"] == "before") for i in range(RUNS)]
            after = [next(r[field] for r in R[key] if r["run"] == i and r["rnd"] == "after") for i in range(RUNS)]
            ref = [min(b, a) for b, a in zip(before, after)]
            off = [max(b, a) / min(b, a) - 1 for b, a in zip(before, after) if min(b, a) > 0]
            drifted = [o for o in off if o > 0.1]
            if drifted and note:
                notes.append(f"{size} QEMU {key} {field}: the runs just before and after Panama's differ by more than 10% "
                             f"in {len(drifted)} of {RUNS} runs (up to {100 * max(drifted):.0f}%)")
            return ref, before, after

        def panama(key, field, saver=None):
            return [next(r[field] for r in R[key] if r["run"] == i and (saver is None or r["saver"] == saver)) for i in range(RUNS)]

        def ratio(num, den):
            return [a / b for a, b in zip(num, den)]

        p(f"== {size}: {RUNS} runs; ms; median and every run in order [..]; QEMU = the faster of its runs just before and"
          f" just after each Panama run")
        # Save, shared RAM by reference.
        q, qb, qa = qemu("qemu_save_shared", "wall_ms")
        qt, _, _ = qemu("qemu_save_shared", "total_ms", note=False)
        p("  save, shared RAM by reference (client: command sent -> completion seen); every Panama save is its process's first")
        p(f"    QEMU x-ignore-shared           {fmt(med(q)):>7} {fmt_list(q)}  (before {fmt_list(qb)}, after {fmt_list(qa)});"
          f" total-time {fmt(med(qt))} {fmt_list(qt)}")
        rows = (("run", "Panama bypass, fresh VM"), ("restored-jit", "  restored VM, no AOT cache"),
                ("restored-aot", "  restored VM, AOT cache"), ("run-after-stop-cont", "  fresh VM after stop, cont"),
                ("run-settled", f"  fresh VM after {SETTLED:g} s"))
        for saver, label in rows:
            w, d = panama("panama_save_bypass", "wall_ms", saver), panama("panama_save_bypass", "duration_ms", saver)
            r = ratio(w, q)
            p(f"    {label:<30} {fmt(med(w)):>7} {fmt_list(w)}  {med(r):.2f}x of QEMU {fmt_list(r)}; duration-ms {fmt(med(d))} {fmt_list(d)}")
        first = panama("panama_save_bypass", "first_stop_ms", "run-after-stop-cont")
        second = panama("panama_save_bypass", "second_stop_ms", "run-after-stop-cont")
        p(f"    {'':<30} stop: first {fmt(med(first))} {fmt_list(first)}, second {fmt(med(second))} {fmt_list(second)}")
        pb = [r for r in R["panama_save_bypass"]]
        p(f"    Panama RAM written: {max(r['ram_written'] for r in pb)} bytes; {pb[0]['by_reference']} block(s) by reference")
        w = panama("panama_save_bypass", "wall_ms", "run")
        bypass[size] = med(w)
        rb = med(ratio(w, q))
        verdicts.append((size, "bypass save / QEMU x-ignore-shared save", rb, "<= 0.5x", rb <= 0.5))
        ws = panama("panama_save_bypass", "wall_ms", "run-settled")
        rs = med(ratio(ws, q))
        verdicts.append((size, f"bypass save after {SETTLED:g} s / QEMU's", rs, "<= 0.5x", rs <= 0.5))
        row = {"size": size, "qs": med(q), "pb": med(w), "rb": rb}

        # Full save.
        q, qb, qa = qemu("qemu_save_full", "wall_ms")
        qt, _, _ = qemu("qemu_save_full", "total_ms", note=False)
        fl = [r["wall_ms"] for r in R["cat_copy"]]
        w, d = panama("panama_save_full", "wall_ms"), panama("panama_save_full", "duration_ms")
        sp = ratio(q, w)
        pf = R["panama_save_full"][0]
        p("  save, all RAM, into a new file on tmpfs")
        p(f"    floor: cat FILE > new file     {fmt(med(fl)):>7} {fmt_list(fl)}  = {gib / (med(fl) / 1e3):.2f} GiB/s")
        p(f"    QEMU full (exec:cat)           {fmt(med(q)):>7} {fmt_list(q)}  (before {fmt_list(qb)}, after {fmt_list(qa)})"
          f" = {gib / (med(q) / 1e3):.2f} GiB/s; total-time {fmt(med(qt))}")
        p(f"    Panama --no-bypass             {fmt(med(w)):>7} {fmt_list(w)}  = {gib / (med(w) / 1e3):.2f} GiB/s;"
          f" duration-ms {fmt(med(d))} {fmt_list(d)}")
        p(f"    QEMU / Panama                  {med(sp):.2f}x {fmt_list(sp)} (QEMU's time over Panama's, per run);"
          f" file {pf['file_bytes']} bytes")
        verdicts.append((size, "full save: QEMU time / Panama time", med(sp), ">= 2x", med(sp) >= 2))
        row.update(qf=med(q), pf=med(w), sp=med(sp), fl=med(fl))

        # Restore.
        q, qb, qa = qemu("qemu_restore_shared", "running_ms")
        qc = [r["connect_ms"] for r in R["qemu_restore_shared"]]
        p("  restore, whole process: spawn -> guest running (QEMU: RESUME event; Panama: reply to cont)")
        row["qr"] = med(q)
        p(f"    QEMU x-ignore-shared           {fmt(med(q)):>7} {fmt_list(q)}  (before {fmt_list(qb)}, after {fmt_list(qa)});"
          f" QMP socket up at {fmt(med(qc))}")
        jf = [r["ready_ms"] for r in R["jvm_floor"]]
        rf = ratio(jf, q)
        row["jf"], row["rjf"] = med(jf), med(rf)
        p(f"    JVM floor (JvmFloor, AOT cache) {fmt(med(jf)):>6} {fmt_list(jf)}  {med(rf):.2f}x of QEMU {fmt_list(rf)}:"
          f" JVM start, one FFM downcall, jackson, a Unix socket; no VMM")
        for name, label in (("jit", "Panama, no AOT cache"), ("aot", "Panama, AOT cache")):
            run = panama(f"panama_restore_{name}", "running_ms")
            con = panama(f"panama_restore_{name}", "connect_ms")
            hb = panama(f"panama_restore_{name}", "hb_ms")
            r = ratio(run, q)
            p(f"    {label:<30} {fmt(med(run)):>7} {fmt_list(run)}  {med(r):.2f}x of QEMU {fmt_list(r)}")
            p(f"    {'':<30} API socket up at {fmt(med(con))}; first heartbeat line at {fmt(med(hb))} {fmt_list(hb)}")
            verdicts.append((size, f"restore, {label} / QEMU restore", med(r), "<= 1.0x", med(r) <= 1.0))
            row[name], row["r" + name] = med(run), med(r)
            if name == "aot":
                over = ratio(run, jf)
                p(f"    {'':<30} {med(over):.2f}x the JVM floor {fmt_list(over)}")
            broken = [x for x in R[f"panama_restore_{name}"] if not x["continuous"]]
            if broken:
                notes.append(f"{size}: {len(broken)} restore(s) ({name}) did not go on with the next heartbeat number")
        table.append(row)
        p("")

    if len(SIZES) > 1:
        small, big = SIZES[0], SIZES[-1]
        flat = bypass[big] / bypass[small]
        verdicts.append((f"{small}->{big}", "bypass save growth with RAM size", flat, "<= 1.25x", flat <= 1.25))

    p("summary (medians, ms; ratios are medians of the per-run ratios):")
    p(f"  {'size':<5} | {'QEMU shared save':>16} | {'Panama bypass':>13} | {'ratio':>5} | {'QEMU full':>9} | {'Panama full':>11} |"
      f" {'QEMU/Panama':>11} | {'cat floor':>9} | {'QEMU restore':>12} | {'Panama restore':>14} | {'ratio':>5} |"
      f" {'+AOT cache':>10} | {'ratio':>5} | {'JVM floor':>9} | {'ratio':>5}")
    for t in table:
        p(f"  {t['size']:<5} | {fmt(t['qs']):>16} | {fmt(t['pb']):>13} | {t['rb']:5.2f} | {fmt(t['qf']):>9} | {fmt(t['pf']):>11} |"
          f" {t['sp']:11.2f} | {fmt(t['fl']):>9} | {fmt(t['qr']):>12} | {fmt(t['jit']):>14} | {t['rjit']:5.2f} |"
          f" {fmt(t['aot']):>10} | {t['raot']:5.2f} | {fmt(t['jf']):>9} | {t['rjf']:5.2f}")
    p("")
    p("verdicts:")
    for size, what, value, target, ok in verdicts:
        p(f"  {size:<9} {what:<48} {value:6.2f}x  target {target:<8} {'MET' if ok else 'MISSED'}")
    p("")
    p(env)
    for n in notes:
        p(f"note: {n}")
    return "\n".join(lines)


def cpu_stat():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def main():
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    load0 = open("/proc/loadavg").read().split()[:3]
    stat0 = cpu_stat()
    t_start = time.monotonic()
    if CFG.get("train_aot"):
        print("== AOT training run (restore under -XX:AOTCacheOutput)", flush=True)
        aot_train()
    all_results = {}
    for size in SIZES:
        mem = os.path.join(WORK, f"mem-{size}.ram")
        print(f"== {size}: filling {mem}", flush=True)
        fill(mem, size_bytes(size))
        R = {k: [] for k in ("qemu_save_shared", "qemu_save_full", "qemu_restore_shared", "cat_copy", "panama_save_bypass",
                             "panama_save_full", "panama_restore_jit", "panama_restore_aot", "jvm_floor")}
        for i in range(RUNS):
            print(f"== {size}: run {i + 1} of {RUNS}: QEMU, cat, Panama VMM, QEMU", flush=True)
            qemu_run(size, mem, i, "before", R)
            floor_run(mem, i, R)
            jvm_floor_run(i, R)
            panama_run(size, mem, i, R)
            qemu_run(size, mem, i, "after", R)
        rm_large(mem)
        all_results[size] = R
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(all_results, f, indent=1)
    stat1 = cpu_stat()
    delta = [b - a for a, b in zip(stat0, stat1)]
    load1 = open("/proc/loadavg").read().split()[:3]
    env = (f"load average at start {' '.join(load0)}, at end {' '.join(load1)}; "
           f"steal {100 * delta[7] / max(1, sum(delta)):.1f}% of CPU time; idle {100 * delta[3] / max(1, sum(delta)):.0f}%; "
           f"measuring took {time.monotonic() - t_start:.0f} s")
    text = summary(all_results, env)
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        log(f"failed: {e}")
        print(f"snapshot_bench: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_all()
