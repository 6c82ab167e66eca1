#!/usr/bin/env python3
"""Density of `vmm host`: N clones in a shared-mode host, in a process-mode host and as N QEMU
processes, and clone latency in both host modes. The driver of bench/run-host-density-bench, which
installs QEMU, builds the VMM, makes the halting BIOS and cleans up after it; the script's header
says what is measured. This file only measures and summarises:

    host_density_bench.py CONFIG.json     (written by run-host-density-bench)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (save_qemu_template, run_driver, write_summary, BenchError, Console, DirWatch, JsonLines, cpu_stat, end_all, fmt_num, loadavg, log,
                      mappings_of, meminfo, pct, raise_priority, rollup, set_log, spawn, steal_idle, stop,
                      stop_all, wait_for_quiet)

CFG = json.load(open(sys.argv[1]))
OUT, WORK, VMM, QEMU, BIOS = CFG["out"], CFG["work"], CFG["vmm"], CFG["qemu"], CFG["bios"]
N, K, LAT, HB_MS = int(CFG["n"]), int(CFG["standby"]), int(CFG["lat"]), int(CFG["hb"])
MEM_WAIT = float(CFG["mem_wait"])
WARMUP = 2          # untimed clones before the timed ones of a latency series
RAMP_POINTS = 10    # memory samples taken as the crowd's clones are added (the picture of memory against N)
IDLE = 0.5          # s of quiet before a timed request
MEMORY = "64M"
CMDLINE = f"console=ttyS0 testguest.mem=48M testguest.hb={HB_MS} testguest.rewrite=10"
HB = r"hb \d+ \d+"
MIB = 1024.0        # KiB per MiB
TICK = os.sysconf("SC_CLK_TCK")
TPL = os.path.join(WORK, "tpl")


def rm(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def logs(name):
    return os.path.join(OUT, "logs", name)


def fresh(name):
    return os.path.join(WORK, name)


# ---------------------------------------------------------------------------------------------
# /proc helpers

def cpu_s(pid):
    """utime + stime of a process in seconds (its threads that ended included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def vcpu_cpu_s(pid):
    """utime + stime of a process's vCPU threads (named vcpu-N): the guests' own running, not the VMM's work."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        if name.startswith("vcpu-"):
            fields = s.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def vm_pte(pid):
    """The page tables of a process (VmPTE of /proc/PID/status), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmPTE:"):
                return int(line.split()[1])
    return 0


def host_mem():
    m = meminfo()
    return {k: m.get(k, 0) for k in ("MemAvailable", "PageTables", "SecPageTables", "KernelStack", "Shmem")}


def delta_mib(a, b):
    return {k: (b[k] - a[k]) / MIB for k in a}


def guest_mem(pid, path):
    """PSS of a process without its guest's memory: (total PSS, the guest file's page-cache pages,
    the guest's dirtied (anonymous, copy-on-write) pages), KiB."""
    r = rollup(pid)
    g = mappings_of(pid, path)
    anon = g.get("Anonymous", 0)
    return r["Pss"], g.get("Pss", 0) - anon, anon


class Pid:
    """A process this script did not start (a host's worker), shaped as spawn()'s for Console.wait."""

    def __init__(self, pid, logpath):
        self.pid, self.logpath, self.returncode = pid, logpath, None

    def poll(self):
        return None if os.path.exists(f"/proc/{self.pid}") else 0


def run_to_end(cmd, name, timeout=180):
    p, _ = spawn(cmd, logs(name))
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd[:6])}... did not end within {timeout} s; see {p.logpath}")
    if rc != 0:
        raise BenchError(f"{' '.join(cmd[:6])}... exited with {rc}; see {p.logpath}")


def wait_log(p, regex, timeout=300):
    deadline = time.monotonic() + timeout
    r = re.compile(regex)
    while time.monotonic() < deadline:
        with open(p.logpath, errors="replace") as f:
            m = r.search(f.read())
        if m:
            return m
        if p.poll() is not None:
            raise BenchError(f"process {p.pid} exited ({p.returncode}) before its log showed /{regex}/; see {p.logpath}")
        time.sleep(0.1)
    raise BenchError(f"no /{regex}/ in {p.logpath} within {timeout} s")


# ---------------------------------------------------------------------------------------------
# Templates

def make_templates():
    con = fresh("tpl-console.log")
    run_to_end([VMM, "template", "create", TPL, "--mem-dir", WORK, "--memory", MEMORY, "--cmdline", CMDLINE,
                "--console", f"file:{con}"], "template-create.log")
    shutil.copy(con, os.path.join(OUT, "template-console.log"))
    tpl_mem = os.path.realpath(os.path.join(TPL, "memory.ram"))
    # QEMU's (docs/vm-templating, as run-clone-bench): the same bytes, share=on, saved with x-ignore-shared.
    shutil.copyfile(tpl_mem, QEMU_MEM)
    sock = fresh("qemu-tpl.sock")
    save_qemu_template(qemu_cmd(True, sock, False), sock, logs("qemu-template.log"), QEMU_MIG)
    return tpl_mem, open(con).readline().strip()


QEMU_MEM = fresh("qemu-tpl.ram")
QEMU_MIG = fresh("qemu-tpl.mig")


def qemu_cmd(share, sock, incoming):
    cmd = [QEMU, "-accel", "kvm", "-machine", "q35", "-m", MEMORY,
           "-object", f"memory-backend-file,id=mem,size={MEMORY},mem-path={QEMU_MEM},share={'on' if share else 'off'}",
           "-machine", "memory-backend=mem", "-bios", BIOS, "-nographic", "-nodefaults", "-serial", "none",
           "-qmp", f"unix:{sock},server=on,wait=off"]
    if incoming:   # QEMU 7.2 has no command-line switch for x-ignore-shared: set over QMP first
        cmd += ["-incoming", "defer"]
    return cmd


# ---------------------------------------------------------------------------------------------
# The hosts

HOST_STATES = []


def host_up(mode):
    sock, state, cons = fresh(f"host-{mode}.sock"), fresh(f"host-{mode}-state"), fresh(f"cons-{mode}")
    os.makedirs(state)
    os.makedirs(cons)
    HOST_STATES.append(state)
    args = [VMM, "host", "--api-socket", sock, "--state-dir", state, "--console-dir", cons, "--isolation", mode]
    if mode == "process":
        args += ["--standby", str(K)]
    p, t0 = spawn(args, logs(f"host-{mode}.log"))
    q = JsonLines(sock, p, timeout=120)
    q.cmd("qmp_capabilities")
    if mode == "shared":
        m = wait_log(p, r"DEBUG (?:\[[^\]]*\] )?(?:vm=\S+ )?Rehearsal: rehearsal (done in (\d+) ms|failed.*)")
        if not m.group(2):
            raise BenchError(f"vmm host's warm-up failed: {m.group(0)}")
    return p, q, DirWatch(cons), t0


def pool_warm(q, timeout=600):
    """Waits until the process-mode host's pool holds K warm workers; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        pool = q.cmd("query-host")["standby"]
        if len(pool) >= K and all(w["ready"] for w in pool):
            return pool
        if time.monotonic() > deadline:
            raise BenchError(f"the host's pool is not warm after {timeout} s: "
                             f"{sum(w['ready'] for w in pool)} of {len(pool)} ready, {K} wanted")
        time.sleep(0.05)


def end_workers(state_dir):
    """Kills what names a host's state directory (its workers live in sessions of their own: end_all misses them)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if state_dir.encode() in f.read():
                    os.kill(int(pid), 9)
        except OSError:
            pass


def latency(mode, host, q, watch):
    """WARMUP + LAT clones one at a time, each destroyed after its first heartbeat."""
    rows = []
    for i in range(WARMUP + LAT):
        if mode == "process":
            pool_warm(q)
        time.sleep(IDLE)
        la = loadavg()[0]
        hcpu0 = cpu_s(host.pid)
        rep, t0, t1 = q.call("clone", template=TPL)
        proc = Pid(rep["pid"], host.logpath) if mode == "process" else host
        con = Console(rep["console"])
        t_hb, _ = con.wait(HB, watch, 60, proc)
        row = {"i": i, "warmup": i < WARMUP, "reply_ms": (t1 - t0) * 1e3, "hb_ms": (t_hb - t0) * 1e3,
               "duration_ms": rep.get("duration-ms"), "worker_ms": rep.get("worker-ms"), "load1": la,
               "host_cpu_s": cpu_s(host.pid) - hcpu0}
        if mode == "process":
            row["worker_cpu_s"] = cpu_s(rep["pid"])
        else:
            vm = next(v for v in q.cmd("query-vms") if v["id"] == rep["id"])
            row["first_entry_ms"] = vm.get("first-entry-ms")
        if con.corrupt():
            raise BenchError(f"{mode} clone {rep['id']} reported CORRUPT: {con.corrupt()[0]}")
        q.cmd("destroy", id=rep["id"])
        con.close()
        rm(rep["console"])
        rows.append(row)
        log(f"latency {mode} {i}: {row}")
    return rows


def wait_all_hb(consoles, watch, pids=None, timeout=900):
    """Until every console shows a heartbeat; returns the time each was seen and, with pids, each
    process's CPU time (all threads, and its vCPU threads) read as its heartbeat was seen."""
    seen, cpu, vcpu = [None] * len(consoles), [None] * len(consoles), [None] * len(consoles)
    left = set(range(len(consoles)))
    deadline = time.monotonic() + timeout
    while left:
        for i in list(left):
            c = consoles[i]
            c.poll()
            j = c.find(HB)
            if j is not None:
                seen[i] = c.lines[j][0]
                if pids:
                    cpu[i], vcpu[i] = cpu_s(pids[i]), vcpu_cpu_s(pids[i])
                left.discard(i)
        if time.monotonic() > deadline:
            raise BenchError(f"{len(left)} of {len(consoles)} clones showed no heartbeat within {timeout} s "
                             f"(e.g. {consoles[min(left)].path})")
        if left:
            watch.wait(0.02)
    return seen, cpu, vcpu


def crowd(mode, host, q, watch, tpl_mem):
    """N clones back to back, until each printed a heartbeat; memory MEM_WAIT s later."""
    pool = pool_warm(q) if mode == "process" else []
    time.sleep(2)
    pool_pids = [w["pid"] for w in pool]
    h0 = host_mem()
    hpss0 = rollup(host.pid)["Pss"]
    hcpu0, hvcpu0 = cpu_s(host.pid), vcpu_cpu_s(host.pid)
    wcpu0 = {p: cpu_s(p) for p in pool_pids}
    la = loadavg()
    step = max(1, N // RAMP_POINTS)
    ramp, pause, worker_kib = [], 0.0, {}

    def sample():
        """Memory of the VMM processes holding the clones so far, as the end reading counts it (PSS without the
        template file's page-cache pages); the requests wait meanwhile, and that pause is kept apart. A
        process-mode worker is read once, at the first sample after its reply (reading every worker at every
        sample would pause the requests for O(N^2) smaps reads)."""
        ts = time.perf_counter()
        hp, hf, _ = guest_mem(host.pid, tpl_mem)
        if mode == "process":
            for r, _ in reps:
                if r["pid"] not in worker_kib:
                    wp, wf, _ = guest_mem(r["pid"], tpl_mem)
                    worker_kib[r["pid"]] = wp - wf
        ramp.append({"n": len(reps), "t_s": ts - t0, "mib": (hp - hf + sum(worker_kib.values())) / MIB})
        return time.perf_counter() - ts

    reps = []
    t0 = time.perf_counter()
    pause += sample()
    for i in range(N):
        rep, _, t1 = q.call("clone", template=TPL)
        reps.append((rep, t1))
        if (i + 1) % step == 0 or i + 1 == N:
            pause += sample()
    t_sent = time.perf_counter()
    consoles = [Console(r["console"]) for r, _ in reps]
    pids = [r["pid"] for r, _ in reps] if mode == "process" else None
    seen, wcpu, wvcpu = wait_all_hb(consoles, watch, pids)
    t_all = max(seen)
    hcpu1, hvcpu1 = cpu_s(host.pid), vcpu_cpu_s(host.pid)
    log(f"crowd {mode}: {N} requests answered in {t_sent - t0:.2f} s, every heartbeat after {t_all - t0:.2f} s")
    time.sleep(max(0.0, t_all + MEM_WAIT - time.perf_counter()))
    h1 = host_mem()
    hp, hf, ha = guest_mem(host.pid, tpl_mem)
    workers = []
    ptes = []
    if mode == "process":
        for p in pids:
            workers.append(guest_mem(p, tpl_mem))
            ptes.append(vm_pte(p))
    repl = [w["pid"] for w in q.cmd("query-host")["standby"]] if mode == "process" else []
    repl_pss = sum(rollup(p)["Pss"] for p in repl if os.path.exists(f"/proc/{p}"))
    first_entry = [v.get("first-entry-ms") for v in q.cmd("query-vms")] if mode == "shared" else []
    bad = [x for c in consoles for x in c.corrupt()]
    if bad:
        raise BenchError(f"{mode} crowd: a guest reported CORRUPT: {bad[0]}")
    r = {"load_before": la, "requests_s": t_sent - t0 - pause, "all_hb_s": t_all - t0, "ramp": ramp, "ramp_pause_s": pause,
         "reply_ms": [(t1 - t0) * 1e3 for _, t1 in reps], "hb_s": [s - t0 for s in seen],
         "host_pss0": hpss0, "host_pss": hp, "host_tpl_file": hf, "host_dirtied": ha,
         "host_cpu_s": hcpu1 - hcpu0, "host_vcpu_cpu_s": hvcpu1 - hvcpu0, "meminfo_delta": delta_mib(h0, h1),
         "h1": h1, "first_entry_ms": first_entry, "pool_pids": pool_pids, "replacements": len(repl), "replacements_pss": repl_pss}
    if mode == "process":
        r.update({"workers_pss": [w[0] for w in workers], "workers_tpl_file": [w[1] for w in workers],
                  "workers_dirtied": [w[2] for w in workers], "workers_cpu_at_hb_s": wcpu,
                  "workers_vcpu_cpu_at_hb_s": wvcpu, "workers_pte": ptes,
                  "workers_cpu_before_request_s": [wcpu0.get(p) for p in pids],
                  "duration_ms": [x.get("duration-ms") for x, _ in reps], "worker_ms": [x.get("worker-ms") for x, _ in reps]})
    for rep, _ in reps:
        q.cmd("destroy", id=rep["id"])
    for c in consoles:
        c.close()
    return r


def host_round(mode, tpl_mem):
    print(f"== {mode} host: start" + (f", {K} standby workers warming" if mode == "process" else ""), flush=True)
    time.sleep(3)   # what the last phase freed goes back to the outer host ~2 s later (ENVIRONMENT.md)
    h_pre = host_mem()
    host, q, watch, t_spawn = host_up(mode)
    R = {}
    if mode == "process":
        pool = pool_warm(q)
        R["pool_warm_s"] = time.perf_counter() - t_spawn
        R["pool_cpu_s"] = [cpu_s(w["pid"]) for w in pool]
        R["pool_pss"] = [rollup(w["pid"])["Pss"] for w in pool]
        R["pool_meminfo_delta"] = delta_mib(h_pre, host_mem())
        log(f"pool of {K} warm after {R['pool_warm_s']:.1f} s")
    print(f"== {mode} host: clone latency, {WARMUP} + {LAT} clones one at a time", flush=True)
    R["latency"] = latency(mode, host, q, watch)
    print(f"== {mode} host: {N} clones at once, then {MEM_WAIT:.0f} s of running", flush=True)
    R["crowd"] = crowd(mode, host, q, watch, tpl_mem)
    R["crowd"]["avail_drop_since_start"] = -delta_mib(h_pre, R["crowd"].pop("h1"))["MemAvailable"]
    q.cmd("quit", check=False)
    q.close()
    stop(host, 60)
    end_workers(HOST_STATES[-1])
    watch.close()
    return R


# ---------------------------------------------------------------------------------------------
# QEMU

def qemu_crowd():
    print(f"== QEMU: {N} clones at once, then {MEM_WAIT:.0f} s of running", flush=True)
    d = fresh("qemu")
    os.makedirs(d)
    time.sleep(3)
    h0 = host_mem()
    la = loadavg()
    t0 = time.perf_counter()
    procs, socks = [], []
    for i in range(N):
        sock = os.path.join(d, f"{i:03d}.sock")
        p, _ = spawn(qemu_cmd(False, sock, True), logs(f"qemu-{i:03d}.log"), quiet=True)
        procs.append(p)
        socks.append(sock)
    qs = []
    for p, sock in zip(procs, socks):
        q = JsonLines(sock, p, poll=0.0005)
        q.cmd("qmp_capabilities")
        q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
        q.cmd("migrate-incoming", uri=f"exec:cat {QEMU_MIG}")
        qs.append(q)
    t_sent = time.perf_counter()
    running, cpu = [None] * N, [None] * N
    deadline = time.monotonic() + 300
    while None in running:
        for i, q in enumerate(qs):
            if running[i] is None:
                st, _, t1 = q.call("query-status")
                if st["status"] == "running":
                    running[i], cpu[i] = t1, cpu_s(procs[i].pid)
        if time.monotonic() > deadline:
            raise BenchError(f"{running.count(None)} QEMU clones not running after 300 s")
        time.sleep(0.005)
    t_all = max(running)
    log(f"QEMU crowd: every clone running after {t_all - t0:.2f} s")
    time.sleep(max(0.0, t_all + MEM_WAIT - time.perf_counter()))
    h1 = host_mem()
    mem = [guest_mem(p.pid, QEMU_MEM) for p in procs]
    for q in qs:
        q.cmd("quit", check=False)
        q.close()
    stop_all(procs, 30)
    return {"load_before": la, "requests_s": t_sent - t0, "all_hb_s": t_all - t0, "hb_s": [t - t0 for t in running],
            "pss": [m[0] for m in mem], "tpl_file": [m[1] for m in mem], "dirtied": [m[2] for m in mem],
            "cpu_at_running_s": cpu, "meminfo_delta": delta_mib(h0, h1)}


# ---------------------------------------------------------------------------------------------
# Summary

def mib(kib):
    return kib / MIB


def med(xs):
    xs = [x for x in xs if x is not None]
    return pct(xs, 50) if xs else float("nan")


def kinds(R):
    """Per kind: time to all running, total memory (MiB), per VM, overhead per VM, dirtied per VM, CPU-s per start."""
    out = {}
    for mode in ("shared", "process"):
        c = R[mode]["crowd"]
        md = c["meminfo_delta"]
        if mode == "shared":
            pt = md["PageTables"] + md["SecPageTables"]
        else:   # the workers' own page tables (they existed before the crowd) + KVM's for their VMs
            pt = mib(sum(c["workers_pte"])) + md["SecPageTables"]
        if mode == "shared":
            pss = c["host_pss"] - c["host_tpl_file"]            # the whole host, its clones' dirtied pages included
            dirt = c["host_dirtied"]
            added = c["host_pss"] - c["host_pss0"] - c["host_tpl_file"] - dirt   # the clones' VMM overhead
            over_vm = mib(added) / N + pt / N
            cpu = (c["host_cpu_s"] - c["host_vcpu_cpu_s"]) / N
            cpu_all = c["host_cpu_s"] / N
            cpu_req = cpu
        else:
            pss = c["host_pss"] + sum(c["workers_pss"]) - sum(c["workers_tpl_file"])
            dirt = sum(c["workers_dirtied"])
            over_vm = med([p - f - a for p, f, a in zip(c["workers_pss"], c["workers_tpl_file"], c["workers_dirtied"])])
            over_vm = mib(over_vm) + pt / N
            host_share = c["host_cpu_s"] / N
            cpu = med([a - v for a, v in zip(c["workers_cpu_at_hb_s"], c["workers_vcpu_cpu_at_hb_s"])]) + host_share
            cpu_all = med(c["workers_cpu_at_hb_s"]) + host_share
            cpu_req = med([a - v - b for a, v, b in zip(c["workers_cpu_at_hb_s"], c["workers_vcpu_cpu_at_hb_s"],
                                                        c["workers_cpu_before_request_s"])]) + host_share
        out[mode] = {"all_s": c["all_hb_s"], "requests_s": c["requests_s"], "total": mib(pss) + pt,
                     "per_vm": (mib(pss) + pt) / N, "overhead_vm": over_vm, "dirtied_vm": mib(dirt) / N,
                     "pt_vm": pt / N, "avail_drop": c["avail_drop_since_start"], "cpu": cpu, "cpu_all": cpu_all,
                     "cpu_req": cpu_req}
    c = R["qemu"]
    md = c["meminfo_delta"]
    pt = md["PageTables"] + md["SecPageTables"]
    pss = sum(c["pss"]) - sum(c["tpl_file"])
    over = med([p - f - a for p, f, a in zip(c["pss"], c["tpl_file"], c["dirtied"])])
    out["qemu"] = {"all_s": c["all_hb_s"], "requests_s": c["requests_s"], "total": mib(pss) + pt,
                   "per_vm": (mib(pss) + pt) / N, "overhead_vm": mib(over) + pt / N, "dirtied_vm": mib(sum(c["dirtied"])) / N,
                   "pt_vm": pt / N, "avail_drop": -md["MemAvailable"], "cpu": med(c["cpu_at_running_s"]),
                   "cpu_all": med(c["cpu_at_running_s"]), "cpu_req": med(c["cpu_at_running_s"])}
    return out


def lat_col(rows, key):
    return [r[key] for r in rows if not r["warmup"] and r.get(key) is not None]


def p50_90(xs):
    return f"{fmt_num(pct(xs, 50))} / {fmt_num(pct(xs, 90))}" if xs else "-"


def summary(R):
    L = []
    p = L.append
    k = kinds(R)
    p(f"Density: {N} clones of a {MEMORY} template ({CMDLINE}), all requested at once; process host --standby {K}")
    p("")
    p("| | shared host | process host | QEMU 7.2 | shared / QEMU | process / QEMU |")
    p("|---|---|---|---|---|---|")

    def row(label, key, unit=""):
        a, b, c = k["shared"][key], k["process"][key], k["qemu"][key]
        p(f"| {label} | {fmt_num(a)}{unit} | {fmt_num(b)}{unit} | {fmt_num(c)}{unit} | "
          f"{fmt_num(a / c) if c else '-'}x | {fmt_num(b / c) if c else '-'}x |")
    row("first request -> every clone running (hb; QEMU: query-status), s", "all_s")
    row("of it: the requests (QEMU: spawn + QMP) until the last reply, s", "requests_s")
    pauses = [R[m]["crowd"].get("ramp_pause_s", 0) for m in ("shared", "process")]
    row("total memory, MiB (PSS without the template file + page tables)", "total")
    row("memory per VM, MiB", "per_vm")
    row("VMM overhead per VM, MiB (without guest memory; + page tables)", "overhead_vm")
    row("guest pages dirtied per VM (copy-on-write), MiB", "dirtied_vm")
    row("page tables per VM (PageTables + SecPageTables delta; process: workers' VmPTE), MiB", "pt_vm")
    row("MemAvailable drop since the host's start (QEMU: the first spawn), MiB", "avail_drop")
    row("CPU-s per VM start, without vCPU threads", "cpu")
    row("CPU-s per VM start, from the request on (a warm worker's warm-up not counted)", "cpu_req")
    row("CPU-s per VM start, all threads", "cpu_all")
    pc = R["process"]["crowd"]
    p("")
    samples = len(R["shared"]["crowd"].get("ramp", []))
    p(f"the requests paused {pauses[0]:.2f} s (shared) and {pauses[1]:.2f} s (process) for {samples} memory samples "
      f"as the clones were added (left out of the requests' time, not of the time to every clone running)")
    p(f"memory read {MEM_WAIT:.0f} s after the last clone's first heartbeat. Process host: its own PSS "
      f"{mib(pc['host_pss']):.1f} MiB (in the total); the pool's {pc['replacements']} replacement workers started meanwhile "
      f"(at nice 19) held {mib(pc['replacements_pss']):.0f} MiB PSS, not in the total (in MemAvailable's drop). "
      f"Shared host: PSS {mib(R['shared']['crowd']['host_pss0']):.1f} MiB before the crowd.")
    p(f"process host's pool: {K} workers warm {R['process']['pool_warm_s']:.1f} s after the host's spawn; per worker "
      f"CPU {fmt_num(med(R['process']['pool_cpu_s']))} s, PSS {fmt_num(mib(med(R['process']['pool_pss'])))} MiB (median); "
      f"MemAvailable dropped {fmt_num(-R['process']['pool_meminfo_delta']['MemAvailable'])} MiB for the warm pool")
    p(f"process mode CPU per start = the worker's whole life up to its first heartbeat (JVM start, warm-up at nice 19, "
      f"adoption) + the host's CPU over the crowd / {N}; of a worker's, {fmt_num(med(pc['workers_cpu_before_request_s']))} s "
      f"were spent before the request (median)")
    se = [x for x in R["shared"]["crowd"]["first_entry_ms"] if x is not None]
    p(f"in the crowd: shared request -> first KVM_RUN p50/p90 {p50_90(se)} ms; process host duration-ms p50/p90 "
      f"{p50_90([x for x in pc['duration_ms'] if x is not None])} ms")
    p("")
    p(f"Clone latency, one at a time, nothing else of this run running ({LAT} after {WARMUP} untimed; the load is below), ms, p50 / p90:")
    p("")
    p("| | request -> first KVM_RUN | host's duration-ms | worker's duration-ms | request -> reply | request -> first hb | host CPU ms |")
    p("|---|---|---|---|---|---|---|")
    s, w = R["shared"]["latency"], R["process"]["latency"]
    p(f"| shared host | {p50_90(lat_col(s, 'first_entry_ms'))} | {p50_90(lat_col(s, 'duration_ms'))} | - | "
      f"{p50_90(lat_col(s, 'reply_ms'))} | {p50_90(lat_col(s, 'hb_ms'))} | {p50_90([x * 1e3 for x in lat_col(s, 'host_cpu_s')])} |")
    p(f"| process host | (in the worker: not reported) | {p50_90(lat_col(w, 'duration_ms'))} | "
      f"{p50_90(lat_col(w, 'worker_ms'))} | {p50_90(lat_col(w, 'reply_ms'))} | {p50_90(lat_col(w, 'hb_ms'))} | "
      f"{p50_90([x * 1e3 for x in lat_col(w, 'host_cpu_s')])} |")
    fe = pct(lat_col(s, "first_entry_ms"), 50)
    pd = pct(lat_col(w, "duration_ms"), 50)
    p("")
    p(f"targets: shared p50 <= 2 ms request -> first KVM_RUN: {fe:.2f} -> {'MET' if fe <= 2 else 'MISSED'}; "
      f"process p50 <= 5 ms (read as the host's duration-ms, request -> the worker's reply after its vCPU started): "
      f"{pd:.2f} -> {'MET' if pd <= 5 else 'MISSED'}")
    so, po = k["shared"]["overhead_vm"], k["process"]["overhead_vm"]
    p(f"memory per VM after {MEM_WAIT:.0f} s (overhead without guest memory, + page tables): shared {so:.2f} MiB "
      f"(target <= 1.5: {'MET' if so <= 1.5 else 'MISSED'}), process {po:.1f} MiB (target <= 40: {'MET' if po <= 40 else 'MISSED'})")
    lat_loads = [r["load1"] for r in s + w]
    p(f"1-minute load during the latency series: {min(lat_loads):.2f}-{max(lat_loads):.2f}")
    p("")
    p(f"{R['quiet_note']}; load before {' '.join(map(str, R['load_before']))}, after {' '.join(map(str, R['load_after']))}; "
      f"steal {R['steal']:.1f}%, idle {R['idle']:.0f}%; measuring took {R['measuring_s']} s; guest banner: {R['banner']}")
    return "\n".join(L)


def main():
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    set_log(os.path.join(OUT, "driver.log"))
    log(f"driver nice value {raise_priority()} (the processes it starts: 0)")
    for k in ("PANAMA_VMM_REHEARSAL", "PANAMA_VMM_NO_REHEARSAL", "JAVA_TOOL_OPTIONS"):
        os.environ.pop(k, None)
    os.environ["PANAMA_VMM_LOG"] = "Rehearsal=debug"   # the shared host says when its warm-up is done
    R = {"n": N, "standby": K, "lat": LAT, "cmdline": CMDLINE, "memory": MEMORY, "mem_wait_s": MEM_WAIT,
         "commit": CFG["commit"], "command": CFG["command"]}
    try:
        print("== templates (untimed)", flush=True)
        tpl_mem, R["banner"] = make_templates()
        R["quiet_note"] = wait_for_quiet(int(CFG["wait_quiet"]), float(CFG["quiet_load"]), log)
        print(f"== {R['quiet_note']}", flush=True)
        R["load_before"] = loadavg()
        R["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        stat0 = cpu_stat()
        t_start = time.monotonic()
        R["shared"] = host_round("shared", tpl_mem)
        R["process"] = host_round("process", tpl_mem)
        R["qemu"] = qemu_crowd()
        R["load_after"] = loadavg()
        R["steal"], R["idle"] = steal_idle(stat0, cpu_stat())
        R["measuring_s"] = round(time.monotonic() - t_start)
    finally:
        for state in HOST_STATES:
            end_workers(state)   # a host's workers outlive it by design: none may outlive the bench
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(R, f, indent=1)
    write_summary(OUT, R, summary)


if __name__ == "__main__":
    run_driver("host_density_bench", main)
