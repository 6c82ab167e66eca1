#!/usr/bin/env python3
"""Restore into a warm VMM (`vmm standby`) beside QEMU pre-started and cold, Panama cold, clones into
a standby and into `vmm serve`, memory and CPU per VM process, and JVM settings for a smaller VM
process. The driver of bench/run-standby-bench.

Run it through bench/run-standby-bench, which builds, installs QEMU, makes the private copy of the
VMM's jars, its AOT cache and the halting BIOS, and cleans up after it; the script's header says
what is measured. This file only measures and summarises:

    standby_bench.py CONFIG.json     (written by run-standby-bench)

Every process it starts goes through benchlib.spawn and is ended (SIGTERM, then SIGKILL) when the
driver stops, whatever the reason; the scratch directory on tmpfs belongs to the calling script.
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BenchError, Console, DirWatch, JsonLines, end_all, fmt_num, loadavg, log, mappings_of, rollup, wait_for_quiet as _wait_for_quiet,  # noqa: E402
                      set_log, spawn, stop)

CFG = json.load(open(sys.argv[1]))
OUT = CFG["out"]            # results directory (raw data, logs, summary)
WORK = CFG["work"]          # scratch directory on tmpfs: memory files, snapshots, sockets, consoles
JAVA = CFG["java"]
JAR = CFG["jar"]            # private copy of vmm-panama/target/vmm.jar (+ lib/ beside it)
AOT = CFG["aot"]            # its AOT cache, trained as ./vmm trains its own
QEMU = CFG["qemu"]
BIOS = CFG["bios"]          # the halting BIOS (cli; hlt) for QEMU
SIZE = CFG["size"]
RUNS = int(CFG["runs"])
SETTLE = float(CFG["settle"])           # s after the first heartbeat before a save
MEM_WAIT = int(CFG["mem_wait"])         # s of guest time before memory is read
WAIT_QUIET = int(CFG["wait_quiet"])     # s to wait at most for a quiet machine
QUIET_LOAD = float(CFG["quiet_load"])
GUEST_CMDLINE = f"console=ttyS0 testguest.mem=16M testguest.hb={int(CFG['hb'])}"
IDLE = 0.5                  # s a pre-started process sits idle (connected) before the clock starts
CLK_TCK = os.sysconf("SC_CLK_TCK")

# JVM settings tried for a smaller VM process: extra options of the standby's java, each measured
# for memory and for restore and warm-save latency beside "default" (-XX:+UseSerialGC and the AOT
# cache: ./vmm's options before it gave standby and incoming -Xms8m, the "xms8m" variant).
VARIANTS = {
    "default": [],
    "xms8m": ["-Xms8m"],
    "heapfree": ["-Xms8m", "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=20"],
    "codecache": ["-XX:ReservedCodeCacheSize=16m"],
    "c1": ["-XX:TieredStopAtLevel=1"],
    "xss": ["-Xss256k"],
    "metaspace": ["-XX:MaxMetaspaceSize=48m"],
    # The AOT cache mapped where it was made instead of relocated (JDK 25 relocates it by default,
    # which writes to, and so makes private, the pages holding pointers).
    "norelocate": ["-XX:+UnlockDiagnosticVMOptions", "-XX:ArchiveRelocationMode=0"],
    # Not a JVM option: glibc's malloc keeps up to 8 arenas per core for the threads that allocate.
    "arenas": ["MALLOC_ARENA_MAX=2"],
    "xms8m-c1": ["-Xms8m", "-XX:TieredStopAtLevel=1"],
    # ./vmm's options for a process that runs one VM (run, restore, clone, standby, incoming).
    "xms8m-c1-norelocate": ["-Xms8m", "-XX:TieredStopAtLevel=1", "-XX:+UnlockDiagnosticVMOptions",
                            "-XX:ArchiveRelocationMode=0"],
    "xms8m-arenas": ["-Xms8m", "MALLOC_ARENA_MAX=2"],
    # Everything that helped a little, together, with one compiler thread and no perf-data file.
    # (-XX:+UseCompactObjectHeaders would shrink the heap too, but an AOT cache made without it
    # refuses to load: "Unable to use AOT cache".)
    "small": ["-Xms8m", "-XX:TieredStopAtLevel=1", "-XX:CICompilerCount=1", "-Xss256k",
              "-XX:-UsePerfData", "MALLOC_ARENA_MAX=2"],
}
_v = CFG["variants"].split()
if _v == ["all"]:
    USED = list(VARIANTS)
elif _v == ["none"]:
    USED = ["default"]
else:
    bad = [v for v in _v if v not in VARIANTS]
    if bad:
        sys.exit(f"standby_bench: unknown variant(s) {' '.join(bad)}; known: {' '.join(VARIANTS)}")
    USED = ["default"] + [v for v in _v if v != "default"]

BASE = [JAVA, "-XX:+UseSerialGC"]
WITH_AOT = [f"-XX:AOTCache={AOT}", "-XX:AOTMode=on", "-Xlog:aot=off", "-Xlog:cds=off"]
NO_AOT = ["-Xshare:auto"]   # the JDK's CDS archive only


def vmm(*args, aot=True, extra=()):
    """The java command line; extra: a variant's options (its NAME=VALUE entries go to start()'s environment)."""
    return BASE + (WITH_AOT if aot else NO_AOT) + [x for x in extra if not re.fullmatch(r"[A-Z_]+=.*", x)] + ["-jar", JAR] + list(args)


def env_of(extra):
    return dict(x.split("=", 1) for x in extra if re.fullmatch(r"[A-Z_]+=.*", x))


now = time.perf_counter
WATCH = None   # DirWatch on WORK, where every console file is


# ---------------------------------------------------------------------------------------------
# Small helpers

SEQ = [0]


def fresh(name):
    SEQ[0] += 1
    return os.path.join(WORK, f"{SEQ[0]:04d}-{name}")


def rm(path):
    subprocess.run(["rm", "-rf", path])


def start(cmd, tag, env=None):
    """benchlib.spawn with env added to the environment the process inherits."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        p, t0 = spawn(cmd, os.path.join(OUT, "logs", f"{tag}.log"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if env:
        log(f"  with {env}")
    return p, t0


def wait_exit(p, timeout=60):
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"process {p.pid} did not exit within {timeout} s; see {p.logpath}")


def wait_path(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before creating {path}; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"{path} did not appear within {timeout} s; see {proc.logpath}")
        time.sleep(0.005)


def wait_log(proc, regex, timeout=300):
    r = re.compile(regex, re.M)
    deadline = time.monotonic() + timeout
    while True:
        with open(proc.logpath, errors="replace") as f:
            m = r.search(f.read())
        if m:
            return m
        if proc.poll() is not None:
            raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before logging /{regex}/; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"no /{regex}/ in {proc.logpath} within {timeout} s")
        time.sleep(0.05)



def cpu_s(pid):
    """user + system CPU seconds of the whole process (its exited threads included), 10 ms ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def first_hb(console, proc, timeout=60):
    """Waits for the first heartbeat line in a console; returns (perf_counter when seen, its seq)."""
    c = Console(console)
    try:
        t, i = c.wait(r"hb 0 \d+", WATCH, timeout, proc)
        if c.corrupt():
            raise BenchError(f"the test guest reported CORRUPT memory; see {console}")
        return t, int(c.lines[i][1].split()[2])
    finally:
        c.close()


def check_console(console):
    c = Console(console)
    try:
        bad = c.corrupt()
        if bad:
            raise BenchError(f"the test guest reported CORRUPT memory: {bad[0]}; see {console}")
        hbs = [int(l.split()[2]) for _, l in c.lines if re.fullmatch(r"hb 0 \d+", l)]
        return hbs[-1] if hbs else None
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# Panama VMM

def bypass_save(q, dest):
    t0 = now()
    rep = q.cmd("snapshot", path=dest, **{"bypass-shared-memory": True})
    t1 = now()
    if rep.get("ram-blocks-by-reference", 0) < 1 or rep.get("ram-bytes-written", 1) != 0:
        raise BenchError(f"not a bypass save: {rep}")
    return {"save_ms": (t1 - t0) * 1e3, "save_duration_ms": rep.get("duration-ms")}


class Chain:
    """One memory file and the bypass snapshot the next restore starts from; each restored VM saves
    again (the VM then stops and its process exits) to make the next one."""

    def __init__(self, name):
        self.name = name
        self.mem = fresh(f"{name}.ram")
        sock, console, self.snap = fresh("boot.sock"), fresh("boot-console.txt"), fresh(f"{name}.snap")
        p, _ = start(vmm("run", "--memory", SIZE, "--mem-path", self.mem, "--shared", "--api-socket", sock,
                         "--console", f"file:{console}", "--cmdline", GUEST_CMDLINE), f"chain-{name}-boot")
        first_hb(console, p, 300)
        q = JsonLines(sock, p)
        q.cmd("qmp_capabilities")
        time.sleep(SETTLE)
        bypass_save(q, self.snap)
        q.close()
        wait_exit(p)
        self.last_hb = check_console(console)
        rm(console)

    def saved(self, q, proc, console, timed=True):
        """Saves the VM behind q into the chain's next snapshot; returns the save's times."""
        nxt = fresh(f"{self.name}.snap")
        r = bypass_save(q, nxt)
        q.close()
        if wait_exit(proc) != 0:
            raise BenchError(f"the VMM exited with {proc.returncode} after its save; see {proc.logpath}")
        self.last_hb = check_console(console)
        rm(self.snap)
        rm(console)
        self.snap = nxt
        return r


def standby_up(tag, extra=()):
    """A `vmm standby`, warm (its socket exists), connected, idle IDLE s; returns (proc, client, console)."""
    sock, console = fresh("standby.sock"), fresh("standby-console.txt")
    p, t0 = start(vmm("standby", "--api-socket", sock, "--console", f"file:{console}", extra=extra), tag, env_of(extra))
    wait_path(sock, p)
    p.warm_s = now() - t0
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    status = q.cmd("query-status")
    if status.get("status") != "prelaunch":
        raise BenchError(f"{tag}: the standby says {status}")
    time.sleep(IDLE)
    return p, q, console


def standby_restore(chain, tag, extra=()):
    """Restore into a warm standby, then a warm save SETTLE s after the first heartbeat."""
    p, q, console = standby_up(tag, extra)
    cpu0 = cpu_s(p.pid)
    la = loadavg()[0]
    prev = chain.last_hb
    rep, t0, t1 = q.call("restore", path=chain.snap)
    t_hb, seq = first_hb(console, p)
    cpu1 = cpu_s(p.pid)
    time.sleep(max(0.0, t_hb + SETTLE - now()))
    r = {"reply_ms": (t1 - t0) * 1e3, "hb_ms": (t_hb - t0) * 1e3, "duration_ms": rep.get("duration-ms"),
         "cpu_total_s": cpu1, "cpu_after_request_s": cpu1 - cpu0, "warm_s": p.warm_s, "hb_seq": seq,
         "hb_prev": prev, "load1": la}
    r.update(chain.saved(q, p, console))
    log(f"{tag}: {r}")
    return r


def panama_cold(chain, tag, aot):
    """`vmm restore SNAP` spawned (no warm-up): spawn to the first heartbeat, then a (cold) save."""
    sock, console = fresh("restore.sock"), fresh("restore-console.txt")
    la = loadavg()[0]
    prev = chain.last_hb
    p, t0 = start(vmm("restore", chain.snap, "--api-socket", sock, "--console", f"file:{console}", aot=aot), tag)
    t_hb, seq = first_hb(console, p)
    cpu1 = cpu_s(p.pid)
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    time.sleep(max(0.0, t_hb + SETTLE - now()))
    r = {"hb_ms": (t_hb - t0) * 1e3, "api_ms": (q.connected - t0) * 1e3, "cpu_total_s": cpu1, "hb_seq": seq,
         "hb_prev": prev, "load1": la}
    r.update(chain.saved(q, p, console))
    log(f"{tag}: {r}")
    return r


def standby_clone(template, tag):
    p, q, console = standby_up(tag)
    cpu0 = cpu_s(p.pid)
    la = loadavg()[0]
    rep, t0, t1 = q.call("clone", template=template)
    t_hb, seq = first_hb(console, p)
    cpu1 = cpu_s(p.pid)
    q.cmd("quit", check=False)
    q.close()
    stop(p)
    rm(console)
    r = {"reply_ms": (t1 - t0) * 1e3, "hb_ms": (t_hb - t0) * 1e3, "duration_ms": rep.get("duration-ms"),
         "cpu_total_s": cpu1, "cpu_after_request_s": cpu1 - cpu0, "load1": la}
    log(f"{tag}: {r}")
    return r


def serve_clone(serve, q, template, consoles, tag):
    cpu0 = cpu_s(serve.pid)
    la = loadavg()[0]
    rep, t0, t1 = q.call("clone", template=template)
    cid = rep["clones"][0]["id"]
    console = os.path.join(consoles, cid + ".log")
    t_hb, _ = first_hb(console, serve)
    cpu1 = cpu_s(serve.pid)
    q.cmd("destroy", id=cid)
    rm(console)
    r = {"reply_ms": (t1 - t0) * 1e3, "hb_ms": (t_hb - t0) * 1e3, "cpu_after_request_s": cpu1 - cpu0, "load1": la}
    log(f"{tag}: {r}")
    return r


class Pid:
    """A process this script did not start (a host's worker), shaped as spawn()'s for memory_of and Console.wait."""

    def __init__(self, pid, logpath):
        self.pid, self.logpath, self.returncode = pid, logpath, None

    def poll(self):
        return None if os.path.exists(f"/proc/{self.pid}") else 0


HOST_STATES = []   # every host's state directory: its workers name it on their command line


def host_up(isolation, tag):
    """A `vmm host` (as ./vmm starts it: -Xms8m); process isolation keeps 2 warm workers."""
    sock, state = fresh(f"host-{isolation}.sock"), fresh(f"host-{isolation}-state")
    pool = ["--standby", "2"] if isolation == "process" else []   # shared mode refuses --standby
    p, _ = start(vmm("host", "--api-socket", sock, "--state-dir", state, "--console-dir", WORK,
                     "--isolation", isolation, *pool, extra=["-Xms8m"]), tag)
    q = JsonLines(sock, p, timeout=120)
    q.cmd("qmp_capabilities")
    if isolation == "shared":
        m = wait_log(p, r"DEBUG (?:\[[^\]]*\] )?(?:vm=\S+ )?Rehearsal: rehearsal (done in (\d+) ms|failed.*)")
        if not m.group(2):
            raise BenchError(f"vmm host's warm-up failed: {m.group(0)}")
    HOST_STATES.append(state)
    return p, q


def host_pool_warm(q, timeout=300):
    """Waits until every standby worker of a process-mode host is warm, then IDLE s more."""
    deadline = time.monotonic() + timeout
    while True:
        pool = q.cmd("query-host")["standby"]
        if pool and all(w["ready"] for w in pool):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the host's standby workers are not warm after {timeout} s: {pool}")
        time.sleep(0.05)
    time.sleep(IDLE)


def host_clone(host, q, template, tag, process):
    if process:
        host_pool_warm(q)
    la = loadavg()[0]
    rep, t0, t1 = q.call("clone", template=template)
    proc = Pid(rep["pid"], host.logpath) if process else host
    t_hb, _ = first_hb(rep["console"], proc)
    q.cmd("destroy", id=rep["id"])
    rm(rep["console"])
    r = {"reply_ms": (t1 - t0) * 1e3, "hb_ms": (t_hb - t0) * 1e3, "duration_ms": rep.get("duration-ms"),
         "worker_ms": rep.get("worker-ms"), "load1": la}
    log(f"{tag}: {r}")
    return r


def end_workers(state_dir):
    """Kills what a host's state directory names (its workers live in sessions of their own: end_all misses them)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if state_dir.encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# QEMU (as snapshot_bench.py runs it)

def qemu_cmd(mem, sock, incoming):
    cmd = [QEMU, "-accel", "kvm", "-machine", "q35", "-m", SIZE,
           "-object", f"memory-backend-file,id=mem,size={SIZE},mem-path={mem},share=on",
           "-machine", "memory-backend=mem", "-bios", BIOS,
           "-nographic", "-nodefaults", "-serial", "none", "-qmp", f"unix:{sock},server,nowait"]
    if incoming:
        cmd += ["-incoming", "defer"]
    return cmd


def qemu_up(mem, tag, incoming):
    sock = fresh("qmp.sock")
    p, t0 = start(qemu_cmd(mem, sock, incoming), tag)
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True},
                                                    {"capability": "events", "state": True}])
    return p, q, t0


def qemu_quit(p, q):
    q.cmd("quit", check=False)
    q.close()
    wait_exit(p)


def qemu_save(mem, dest, tag):
    p, q, _ = qemu_up(mem, tag, False)
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    time.sleep(SETTLE)
    t0 = now()
    q.cmd("migrate", uri=f"exec:cat > {dest}")
    t1, ev = q.wait_event(lambda e: e["event"] == "MIGRATION" and e["data"]["status"] in ("completed", "failed", "cancelled"),
                          120) or (None, None)
    if ev is None or ev["data"]["status"] != "completed":
        raise BenchError(f"{tag}: QEMU's save did not complete: {ev}; see {p.logpath}")
    qemu_quit(p, q)
    return {"save_ms": (t1 - t0) * 1e3}


def qemu_incoming(p, q, src, tag):
    """migrate-incoming exec:cat SRC into a pre-started QEMU; returns (perf_counter sent, RESUME read)."""
    t0 = now()
    q.cmd("migrate-incoming", uri=f"exec:cat {src}")
    t1, _ = q.wait_event("RESUME", 60) or (None, None)
    if t1 is None:
        raise BenchError(f"{tag}: QEMU did not resume within 60 s; see {p.logpath}")
    if not q.cmd("query-status")["running"]:
        raise BenchError(f"{tag}: the restored QEMU is not running")
    return t0, t1


def qemu_prestarted(mem, src, tag):
    p, q, _ = qemu_up(mem, tag, True)
    time.sleep(IDLE)
    cpu0 = cpu_s(p.pid)
    la = loadavg()[0]
    t0, t1 = qemu_incoming(p, q, src, tag)
    cpu1 = cpu_s(p.pid)
    qemu_quit(p, q)
    r = {"resume_ms": (t1 - t0) * 1e3, "cpu_total_s": cpu1, "cpu_after_request_s": cpu1 - cpu0, "load1": la}
    log(f"{tag}: {r}")
    return r


def qemu_cold(mem, src, tag):
    la = loadavg()[0]
    p, q, t_spawn = qemu_up(mem, tag, True)
    _, t1 = qemu_incoming(p, q, src, tag)
    cpu1 = cpu_s(p.pid)
    qemu_quit(p, q)
    r = {"resume_ms": (t1 - t_spawn) * 1e3, "cpu_total_s": cpu1, "load1": la}
    log(f"{tag}: {r}")
    return r


# ---------------------------------------------------------------------------------------------
# Memory: many VM processes at once, each read after its guest ran MEM_WAIT s

def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory_of(pid, guest_ram):
    """PSS and its parts without the mappings of the guest's memory file, in KiB."""
    r = rollup(pid)
    g = mappings_of(pid, guest_ram)
    anon_in_ram = g.get("Anonymous", 0)   # copy-on-write pages of a private (clone) mapping
    # A memory file on tmpfs is shmem: its pages count in Pss_Shmem (Pss = Pss_Anon + Pss_File + Pss_Shmem).
    return {"pss": r["Pss"] - g.get("Pss", 0), "pss_anon": r.get("Pss_Anon", 0) - anon_in_ram,
            "pss_file": r.get("Pss_File", 0) + r.get("Pss_Shmem", 0) - (g.get("Pss", 0) - anon_in_ram),
            "private": r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
            - g.get("Private_Clean", 0) - g.get("Private_Dirty", 0),
            "rss": r["Rss"] - g.get("Rss", 0), "guest_ram_pss": g.get("Pss", 0), "guest_ram_maps": g["count"],
            "vm_pte": status_kib(pid, "VmPTE"), "threads": len(os.listdir(f"/proc/{pid}/task")),
            "cpu_s": cpu_s(pid)}


def template_ram(template):
    meta = subprocess.run(vmm("template", "inspect", template, "--json"), capture_output=True, text=True, check=True)
    paths = re.findall(r'"(/[^"]+)"', meta.stdout)
    files = [x for x in paths if x.startswith(WORK) and not x.startswith(template) and os.path.isfile(x)]
    if not files:
        raise BenchError(f"no memory file in `vmm template inspect {template} --json`: {meta.stdout[:300]}")
    return files[0]


def memory_round(i, chains, template, tpl_ram, qemu_mem, qemu_snap, phost_q):
    subjects = []   # (name, proc, guest RAM path, started, finish) finish(): saves or quits
    try:
        host_pool_warm(phost_q)
        rep = phost_q.cmd("clone", template=template)
        subjects.append(("host worker (process isolation), cloned", Pid(rep["pid"], "(host worker)"), tpl_ram, now(),
                         lambda rep=rep: (phost_q.cmd("destroy", id=rep["id"]), rm(rep["console"]))))
        # Warm standbys first (their warm-ups overlap), then every VM is started.
        standbys = {}
        for v in USED:
            standbys[v] = standby_up(f"{i}-mem-standby-{v}", VARIANTS[v])
        clone_sb = standby_up(f"{i}-mem-standby-clone")
        for v in USED:
            p, q, console = standbys[v]
            chain = chains[v]
            q.cmd("restore", path=chain.snap)
            subjects.append((f"standby, restored ({v})" if v != "default" else "standby, restored", p, chain.mem, now(),
                             lambda q=q, p=p, console=console, chain=chain: chain.saved(q, p, console)))
        p, q, console = clone_sb
        q.cmd("clone", template=template)
        subjects.append(("standby, cloned", p, tpl_ram, now(), lambda q=q, p=p, console=console: (q.close(), stop(p), rm(console))))
        for name, flags in (("vmm run", []), ("vmm run --warm-up", ["--warm-up"])):
            mem, console = fresh("run.ram"), fresh("run-console.txt")
            p, _ = start(vmm("run", "--memory", SIZE, "--mem-path", mem, "--shared", "--console", f"file:{console}",
                             "--cmdline", GUEST_CMDLINE, *flags), f"{i}-mem-{name.replace(' ', '').replace('--', '-')}")
            subjects.append((name, p, mem, now(), lambda p=p, mem=mem, console=console: (stop(p), rm(mem), rm(console))))
        p, q, _ = qemu_up(qemu_mem, f"{i}-mem-qemu", True)
        qemu_incoming(p, q, qemu_snap, f"{i}-mem-qemu")
        subjects.append(("QEMU", p, qemu_mem, now(), lambda p=p, q=q: qemu_quit(p, q)))
        rows = {}
        for name, p, ram, t_start, _ in subjects:
            time.sleep(max(0.0, t_start + MEM_WAIT - now()))
            if p.poll() is not None:
                raise BenchError(f"{name} exited ({p.returncode}) before its memory was read; see {p.logpath}")
            rows[name] = dict(memory_of(p.pid, ram), ran_s=round(now() - t_start, 1))
        log(f"{i}: memory {rows}")
        return rows
    finally:
        for name, p, _, _, finish in subjects:
            if p.poll() is None:
                finish()


# ---------------------------------------------------------------------------------------------
# Summary

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


fmt = fmt_num


def mr(xs):
    xs = [x for x in xs if x is not None]
    return f"{fmt(med(xs))} [{fmt(min(xs))}-{fmt(max(xs))}]" if xs else "-"


def ratios(xs, ys):
    return [a / b for a, b in zip(xs, ys) if b]


def col(R, key, field):
    return [r[field] for r in R[key]]


def summary(R):
    lines = []
    p = lines.append
    runs = len(R["qemu_prestarted"])
    p(f"restore into a warm VMM, {SIZE} guest RAM in a shared file on /dev/shm, {runs} round(s); Panama guest"
      f" `{GUEST_CMDLINE}`; VMM at git {R['commit']}; {R['date']}")
    p(f"load average before {R['load_before']}, after {R.get('load_after')}; {R['quiet_note']}")
    p("ms, median [min-max] over the rounds; ratios: the median of the per-round ratios")
    p("")
    qpre, qcold = col(R, "qemu_prestarted", "resume_ms"), col(R, "qemu_cold", "resume_ms")
    wr, wh = col(R, "standby_default", "reply_ms"), col(R, "standby_default", "hb_ms")
    cj, ca = col(R, "cold_jit", "hb_ms"), col(R, "cold_aot", "hb_ms")
    p("| start a VM from a snapshot | ms | / QEMU pre-started | / QEMU cold |")
    p("|---|---|---|---|")
    p(f"| QEMU pre-started: migrate-incoming -> RESUME | {mr(qpre)} | 1 | {fmt(med(ratios(qpre, qcold)))}x |")
    p(f"| QEMU cold: spawn -> RESUME | {mr(qcold)} | {fmt(med(ratios(qcold, qpre)))}x | 1 |")
    p(f"| Panama standby: restore -> reply (VM running) | {mr(wr)} | {fmt(med(ratios(wr, qpre)))}x | {fmt(med(ratios(wr, qcold)))}x |")
    p(f"| Panama standby: restore -> first heartbeat | {mr(wh)} | {fmt(med(ratios(wh, qpre)))}x | {fmt(med(ratios(wh, qcold)))}x |")
    p(f"| Panama standby: the VMM's duration-ms | {mr(col(R, 'standby_default', 'duration_ms'))} | | |")
    p(f"| Panama cold `vmm restore`, no AOT cache: spawn -> first heartbeat | {mr(cj)} | {fmt(med(ratios(cj, qpre)))}x | {fmt(med(ratios(cj, qcold)))}x |")
    p(f"| Panama cold `vmm restore`, AOT cache: spawn -> first heartbeat | {mr(ca)} | {fmt(med(ratios(ca, qpre)))}x | {fmt(med(ratios(ca, qcold)))}x |")
    p(f"| Panama cold, AOT cache: spawn -> API socket answers | {mr(col(R, 'cold_aot', 'api_ms'))} | | |")
    p("")
    r_pre, r_cold = ratios(wr, qpre), ratios(wr, qcold)
    p("per round, warm restore (reply) / QEMU pre-started: " + " ".join(f"{x:.2f}" for x in r_pre)
      + f"; target <= 0.5x: {'MET' if med(r_pre) <= 0.5 else 'MISSED'} (median {med(r_pre):.2f}x)")
    p("per round, warm restore (reply) / QEMU cold: " + " ".join(f"{x:.2f}" for x in r_cold)
      + f"; target <= 0.25x: {'MET' if med(r_cold) <= 0.25 else 'MISSED'} (median {med(r_cold):.2f}x)")
    hb_pre = ratios(wh, qpre)
    p("per round, warm restore (first heartbeat) / QEMU pre-started: " + " ".join(f"{x:.2f}" for x in hb_pre)
      + f" (the heartbeat also waits for the guest's own period; QEMU's guest prints nothing)")
    p("")
    p("| clone | request -> reply | request -> first heartbeat |")
    p("|---|---|---|")
    p(f"| into a warm `vmm standby` | {mr(col(R, 'clone_standby', 'reply_ms'))} | {mr(col(R, 'clone_standby', 'hb_ms'))} |")
    p(f"| in `vmm serve` (in-process) | {mr(col(R, 'clone_serve', 'reply_ms'))} | {mr(col(R, 'clone_serve', 'hb_ms'))} |")
    p(f"| `vmm host --isolation shared` | {mr(col(R, 'clone_host_shared', 'reply_ms'))} | {mr(col(R, 'clone_host_shared', 'hb_ms'))} |")
    p(f"| `vmm host --isolation process` (a warm worker of its pool) | {mr(col(R, 'clone_host_process', 'reply_ms'))} |"
      f" {mr(col(R, 'clone_host_process', 'hb_ms'))} |")
    p(f"process-mode host: its own duration-ms {mr(col(R, 'clone_host_process', 'duration_ms'))}, of it the worker's"
      f" {mr(col(R, 'clone_host_process', 'worker_ms'))}; shared-mode host's duration-ms"
      f" {mr(col(R, 'clone_host_shared', 'duration_ms'))}")
    p("")
    p("| save (bypass / x-ignore-shared), request -> reply | ms |")
    p("|---|---|")
    p(f"| QEMU, a new process {SETTLE:g} s after it is up | {mr(col(R, 'qemu_save', 'save_ms'))} |")
    p(f"| Panama standby (warm), {SETTLE:g} s after the first heartbeat | {mr(col(R, 'standby_default', 'save_ms'))} |")
    p(f"| Panama cold `vmm restore`, no AOT cache | {mr(col(R, 'cold_jit', 'save_ms'))} |")
    p(f"| Panama cold `vmm restore`, AOT cache | {mr(col(R, 'cold_aot', 'save_ms'))} |")
    p("")
    p("CPU-seconds per VM start (utime + stime, 10 ms ticks): the whole process until the first heartbeat (QEMU: RESUME);"
      " for a pre-started process also the part after the request")
    p("| mode | whole process | after the request |")
    p("|---|---|---|")
    p(f"| QEMU pre-started | {mr(col(R, 'qemu_prestarted', 'cpu_total_s'))} | {mr(col(R, 'qemu_prestarted', 'cpu_after_request_s'))} |")
    p(f"| QEMU cold | {mr(col(R, 'qemu_cold', 'cpu_total_s'))} | |")
    p(f"| Panama standby, restore (warm-up included) | {mr(col(R, 'standby_default', 'cpu_total_s'))} | {mr(col(R, 'standby_default', 'cpu_after_request_s'))} |")
    p(f"| Panama standby, clone (warm-up included) | {mr(col(R, 'clone_standby', 'cpu_total_s'))} | {mr(col(R, 'clone_standby', 'cpu_after_request_s'))} |")
    p(f"| Panama `vmm serve` clone | | {mr(col(R, 'clone_serve', 'cpu_after_request_s'))} |")
    p(f"| Panama cold `vmm restore`, no AOT cache | {mr(col(R, 'cold_jit', 'cpu_total_s'))} | |")
    p(f"| Panama cold `vmm restore`, AOT cache | {mr(col(R, 'cold_aot', 'cpu_total_s'))} | |")
    p(f"standby: socket up (warm) {mr(col(R, 'standby_default', 'warm_s'))} s after spawning")
    p("")
    p(f"memory per VM process after its guest ran {MEM_WAIT} s (MiB; PSS from /proc/PID/smaps_rollup without the"
      " mappings of the guest's memory file; all the processes ran at once, so file-backed pages they share"
      " (JDK, AOT cache) are divided among them)")
    p("| process | PSS | of it anonymous | of it file-backed | private | RSS | VmPTE KiB | threads | CPU s so far |")
    p("|---|---|---|---|---|---|---|---|---|")
    names = list(R["memory"][0]) if R["memory"] else []
    for n in names:
        rows = [m[n] for m in R["memory"]]

        def g(k, div=1024):
            return mr([r[k] / div for r in rows])
        p(f"| {n} | {g('pss')} | {g('pss_anon')} | {g('pss_file')} | {g('private')} | {g('rss')} | {g('vm_pte', 1)}"
          f" | {g('threads', 1)} | {g('cpu_s', 1)} |")
    if len(USED) > 1:
        p("")
        p("JVM settings of the standby (each variant = -XX:+UseSerialGC and the AOT cache plus these; ./vmm's options for a"
          " one-VM process are xms8m-c1-norelocate); ratios per round to the default's"
          " in the same round")
        p("| variant | options | PSS MiB | PSS anon MiB | restore -> reply ms | restore -> heartbeat ms | warm save ms |")
        p("|---|---|---|---|---|---|---|")
        base_pss = [m["standby, restored"]["pss"] for m in R["memory"]]
        for v in USED:
            key = "standby, restored" + (f" ({v})" if v != "default" else "")
            pss = [m[key]["pss"] for m in R["memory"]]
            anon = [m[key]["pss_anon"] for m in R["memory"]]
            rr, rh, sv = col(R, f"standby_{v}", "reply_ms"), col(R, f"standby_{v}", "hb_ms"), col(R, f"standby_{v}", "save_ms")
            if v == "default":
                p(f"| default | (none) | {mr([x / 1024 for x in pss])} | {mr([x / 1024 for x in anon])} | {mr(rr)} | {mr(rh)} | {mr(sv)} |")
            else:
                p(f"| {v} | `{' '.join(VARIANTS[v])}` | {mr([x / 1024 for x in pss])} ({fmt(med(ratios(pss, base_pss)))}x) |"
                  f" {mr([x / 1024 for x in anon])} | {mr(rr)} ({fmt(med(ratios(rr, wr)))}x) | {mr(rh)} |"
                  f" {mr(sv)} ({fmt(med(ratios(sv, col(R, 'standby_default', 'save_ms'))))}x) |")
    p("")
    p("every round, in order (ms): QEMU pre-started " + " ".join(fmt(x) for x in qpre) + "; QEMU cold "
      + " ".join(fmt(x) for x in qcold) + "; standby reply " + " ".join(fmt(x) for x in wr) + "; standby heartbeat "
      + " ".join(fmt(x) for x in wh) + "; cold no-AOT " + " ".join(fmt(x) for x in cj) + "; cold AOT " + " ".join(fmt(x) for x in ca))
    gaps = [(k, r["hb_prev"], r["hb_seq"]) for k in R if k.startswith(("standby_", "cold_")) for r in R[k]
            if r.get("hb_prev") is not None and r["hb_seq"] != r["hb_prev"] + 1]
    p("heartbeats continued without gap or repeat after every restore" if not gaps
      else f"heartbeat sequence after a restore not last+1 (a line cut by the save can be lost): {gaps}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def wait_for_quiet():
    return _wait_for_quiet(WAIT_QUIET, QUIET_LOAD, log)


def main():
    global WATCH
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    set_log(os.path.join(OUT, "driver.log"))
    for k in ("PANAMA_VMM_REHEARSAL", "PANAMA_VMM_NO_REHEARSAL", "JAVA_TOOL_OPTIONS"):
        os.environ.pop(k, None)
    os.environ["PANAMA_VMM_LOG"] = "Rehearsal=debug"   # `vmm serve` says when its background warm-up is done
    WATCH = DirWatch(WORK)
    R = {"size": SIZE, "runs": RUNS, "settle_s": SETTLE, "mem_wait_s": MEM_WAIT, "commit": CFG["commit"],
         "cmdline": GUEST_CMDLINE, "java": vmm()[:-2], "variants": {v: VARIANTS[v] for v in USED},
         "qemu_save": [], "qemu_prestarted": [], "qemu_cold": [], "cold_jit": [], "cold_aot": [],
         "clone_standby": [], "clone_serve": [], "clone_host_shared": [], "clone_host_process": [], "memory": []}
    for v in USED:
        R[f"standby_{v}"] = []
    R["quiet_note"] = wait_for_quiet()
    print(f"== {R['quiet_note']}", flush=True)
    R["load_before"] = loadavg()
    R["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.monotonic()
    try:
        print("== setup: template, vmm serve, snapshot chains", flush=True)
        template = os.path.join(WORK, "template")
        with open(os.path.join(OUT, "logs", "template-create.log"), "wb") as f:
            rc = subprocess.run(vmm("template", "create", template, "--memory", SIZE, "--mem-dir", WORK, "--cmdline", GUEST_CMDLINE),
                                stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise BenchError(f"vmm template create failed ({rc}); see {OUT}/logs/template-create.log")
        tpl_ram = template_ram(template)
        consoles = os.path.join(WORK, "serve-consoles")
        os.makedirs(consoles)
        serve_sock = os.path.join(WORK, "serve.sock")
        serve, _ = start(BASE + WITH_AOT + ["-Xms8m", "-jar", JAR, "serve", "--api-socket", serve_sock, "--console-dir", consoles],
                         "serve")
        serve_q = JsonLines(serve_sock, serve, timeout=120)
        serve_q.cmd("qmp_capabilities")
        m = wait_log(serve, r"DEBUG (?:\[[^\]]*\] )?(?:vm=\S+ )?Rehearsal: rehearsal (done in (\d+) ms|failed.*)")
        if not m.group(2):
            raise BenchError(f"vmm serve's warm-up failed: {m.group(0)}")
        shost, shost_q = host_up("shared", "host-shared")
        phost, phost_q = host_up("process", "host-process")
        timing = Chain("timing")
        mem_chains = {v: Chain(f"mem-{v}") for v in USED}
        qemu_mem, qemu_snap = fresh("qemu.ram"), fresh("qemu.mig")
        qemu_save(qemu_mem, qemu_snap, "qemu-save-setup")

        for i in range(RUNS):
            k = i % len(USED)
            order = USED[k:] + USED[:k]
            print(f"== round {i + 1} of {RUNS}: QEMU save, pre-started, cold; standby restores ({', '.join(order)});"
                  f" cold restores; clones; memory after {MEM_WAIT} s", flush=True)
            R["qemu_save"].append(dict(qemu_save(qemu_mem, qemu_snap, f"{i}-qemu-save"), run=i))
            R["qemu_prestarted"].append(dict(qemu_prestarted(qemu_mem, qemu_snap, f"{i}-qemu-prestarted"), run=i))
            R["qemu_cold"].append(dict(qemu_cold(qemu_mem, qemu_snap, f"{i}-qemu-cold"), run=i))
            for v in order:
                R[f"standby_{v}"].append(dict(standby_restore(timing, f"{i}-standby-{v}", VARIANTS[v]), run=i))
            for aot in ((False, True) if i % 2 == 0 else (True, False)):
                name = "cold_aot" if aot else "cold_jit"
                R[name].append(dict(panama_cold(timing, f"{i}-{name}", aot), run=i))
            R["clone_standby"].append(dict(standby_clone(template, f"{i}-clone-standby"), run=i))
            R["clone_serve"].append(dict(serve_clone(serve, serve_q, template, consoles, f"{i}-clone-serve"), run=i))
            R["clone_host_shared"].append(dict(host_clone(shost, shost_q, template, f"{i}-clone-host-shared", False), run=i))
            R["clone_host_process"].append(dict(host_clone(phost, phost_q, template, f"{i}-clone-host-process", True), run=i))
            R["memory"].append(memory_round(i, mem_chains, template, tpl_ram, qemu_mem, qemu_snap, phost_q))
        serve_q.cmd("quit", check=False)
        serve_q.close()
        stop(serve)
        for q, p in ((shost_q, shost), (phost_q, phost)):
            q.cmd("quit", check=False)
            q.close()
            stop(p)
        R["load_after"] = loadavg()
        R["measuring_s"] = round(time.monotonic() - t_start)
    finally:
        for state in HOST_STATES:
            end_workers(state)   # a host's workers outlive it by design: none may outlive the bench
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
        print(f"standby_bench: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_all()
