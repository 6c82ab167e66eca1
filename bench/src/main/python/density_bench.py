#!/usr/bin/env python3
"""Clone density: PSS of N clones of a 256 MiB template (in one `vmm serve`, and as N `vmm clone`
processes) against N booted VMs (`vmm run`), for several testguest.rewrite= settings. The driver
of bench/run-density-bench, which copies the VMM's jars and cleans up after it; the script's
header says what is measured. This file only measures and summarises:

    density_bench.py CONFIG.json     (written by run-density-bench)
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BenchError, Console, DirWatch, JsonLines, cpu_stat, end_all, log, mappings_of, meminfo,
                             raise_priority, remove_template, rollup, set_log, spawn, steal_idle, stop_all)

CFG = json.load(open(sys.argv[1]))
OUT, WORK = CFG["out"], CFG["work"]
JAVA, JAR = CFG["java"], CFG["jar"]
N = int(CFG["n"])
REWRITES = [int(x) for x in CFG["rewrites"]]
BOOTED_FOR = [int(x) for x in CFG["booted_for"]]
SETTLE_S = float(CFG["settle_s"])
MEMORY, MEMORY_MIB = "256M", 256
JAVA_CMD = [JAVA, "-XX:+UseSerialGC", "-Xshare:auto", "-jar", JAR]
HB = r"hb \d+ \d+"
GENID = r"genid 0x[0-9a-f]{16}"
MIB = 1024.0   # KiB per MiB
START_AT_ONCE = 4


def cmdline(p):
    return f"console=ttyS0 testguest.mem=256M testguest.hb=500 testguest.rewrite={p}"


def logs(name):
    return os.path.join(OUT, "logs", name)


def run_to_end(cmd, name, timeout=180):
    p, _ = spawn(cmd, logs(name))
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd[:8])}... did not end within {timeout} s; see {p.logpath}")
    if rc != 0:
        raise BenchError(f"{' '.join(cmd[:8])}... exited with {rc}; see {p.logpath}")


class MemoryShort(BenchError):
    pass


def need_memory(mib, what):
    avail = meminfo()["MemAvailable"] / MIB
    if avail < mib + 1024:
        raise MemoryShort(f"{what} needs about {mib:.0f} MiB and 1 GiB to spare; only {avail:.0f} MiB are available")


def host():
    m = meminfo()
    return {k: m.get(k, 0) for k in ("MemAvailable", "MemFree", "Shmem", "AnonPages", "PageTables", "SecPageTables",
                                        "KernelStack", "SUnreclaim", "Cached")}


def host_delta(a, b):
    return {k: (b[k] - a[k]) / MIB for k in a}


def settle(pss_of, label):
    """Samples a total PSS (KiB) every 2 s until it moved by < 0.5 % over the last 10 s (5 samples),
    and for at least SETTLE_S seconds; returns (the last sample, the samples). Copy-on-write is
    slow here (tens of MiB/s over all clones), so a 2 s window would stop too early."""
    t0 = time.monotonic()
    samples = [pss_of()]
    while True:
        time.sleep(2)
        samples.append(pss_of())
        if len(samples) > 5 and time.monotonic() - t0 >= SETTLE_S:
            a, b = samples[-6], samples[-1]
            if abs(b - a) <= 0.005 * max(a, 1):
                break
        if time.monotonic() - t0 > 600:
            log(f"{label}: PSS still moving after 600 s: {samples[-5:]}")
            break
    log(f"{label}: PSS samples (MiB) {[round(s / MIB) for s in samples]}")
    return samples[-1], samples


def check_consoles(consoles, label):
    bad = [c.corrupt() for c in consoles]
    bad = [x for b in bad for x in b]
    if bad:
        raise BenchError(f"{label}: a guest reported CORRUPT memory: {bad[0]}")


def wait_first(consoles, procs, watch, regex, label, timeout=600):
    """Waits until every console shows a line matching regex."""
    deadline = time.monotonic() + timeout
    for i, c in enumerate(consoles):
        c.wait(regex, watch, max(1, deadline - time.monotonic()), procs[i] if procs else None)
    log(f"{label}: every console shows /{regex}/")


# ---------------------------------------------------------------------------------------------

def make_template(p):
    tpl = os.path.join(WORK, f"tpl-{p}")
    con = os.path.join(WORK, f"tpl-{p}.log")
    run_to_end(JAVA_CMD + ["template", "create", tpl, "--mem-dir", WORK, "--memory", MEMORY, "--cmdline", cmdline(p),
                           "--console", f"file:{con}"], f"template-{p}.log")
    banner = open(con).readline().strip()
    return tpl, os.path.realpath(os.path.join(tpl, "memory.ram")), banner


def serve_clones(p, tpl, tpl_mem):
    consdir = os.path.join(WORK, f"serve-{p}")
    os.makedirs(consdir)
    sock = os.path.join(WORK, f"serve-{p}.sock")
    # -Xms8m: as ./vmm starts serve.
    proc, _ = spawn(JAVA_CMD[:1] + ["-Xms8m"] + JAVA_CMD[1:] + ["serve", "--api-socket", sock, "--console-dir", consdir], logs(f"serve-{p}.log"))
    api = JsonLines(sock, proc)
    watch = DirWatch(consdir)
    time.sleep(1)
    pss0 = rollup(proc.pid)
    h0 = host()
    # one warm-up clone (loads the template, runs the clone path once), destroyed
    ret = api.cmd("clone", template=tpl)
    c = Console(ret["clones"][0]["console"])
    c.wait(GENID, watch, 60, proc)
    api.cmd("destroy", id=ret["clones"][0]["id"])
    time.sleep(1)
    pss0w = rollup(proc.pid)
    consoles, ids = [], []
    t0 = time.monotonic()
    for i in range(N):
        ret = api.cmd("clone", template=tpl)
        ids.append(ret["clones"][0]["id"])
        consoles.append(Console(ret["clones"][0]["console"]))
    wait_first(consoles, None, watch, HB, f"serve rewrite={p}")
    t_started = time.monotonic() - t0
    total, samples = settle(lambda: rollup(proc.pid)["Pss"], f"serve rewrite={p}")
    r = rollup(proc.pid)
    tm = mappings_of(proc.pid, tpl_mem)
    h1 = host()
    check_consoles(consoles, f"serve rewrite={p}")
    t_d = time.monotonic()
    for cid in ids:
        api.cmd("destroy", id=cid)
    t_d = time.monotonic() - t_d
    time.sleep(1)
    pss_d = rollup(proc.pid)
    api.cmd("quit")
    api.close()
    watch.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"serve did not exit after quit; see {proc.logpath}")
    return {"pss0": pss0, "pss0_warm": pss0w, "pssN": r, "pss_destroyed": pss_d, "destroy_s": t_d, "template_maps": tm,
            "host_delta": host_delta(h0, h1), "start_s": t_started, "samples": samples}


def processes(p, kind, tpl):
    """N `vmm clone` (kind "clone") or `vmm run` (kind "run") processes; their PSS once settled.
    At most START_AT_ONCE start at a time, and each is stopped (SIGSTOP) as soon as its guest
    printed a heartbeat, so that JVM starts and guest boots do not compete for the two cores with
    the guests already running; all continue (SIGCONT) together before PSS is sampled."""
    d = os.path.join(WORK, f"{kind}-{p}")
    os.makedirs(d)
    watch = DirWatch(d)
    h0 = host()
    procs, consoles, start_s = [None] * N, [None] * N, [None] * N
    pending, active = list(range(N)), {}
    t0 = time.monotonic()
    while pending or active:
        while pending and len(active) < START_AT_ONCE:
            i = pending.pop(0)
            con = os.path.join(d, f"{i:02d}.log")
            args = ["clone", tpl] if kind == "clone" else ["run", "--memory", MEMORY, "--cmdline", cmdline(p)]
            procs[i], _ = spawn(JAVA_CMD + args + ["--console", f"file:{con}"], logs(f"{kind}-{p}-{i:02d}.log"), quiet=True)
            consoles[i] = Console(con)
            active[i] = time.monotonic()
        for i in list(active):
            consoles[i].poll()
            if consoles[i].find(HB) is not None:
                os.kill(procs[i].pid, signal.SIGSTOP)
                start_s[i] = time.monotonic() - active.pop(i)
            elif procs[i].poll() is not None:
                raise BenchError(f"{kind} process {procs[i].pid} exited ({procs[i].returncode}) before its first heartbeat; "
                                 f"see {procs[i].logpath}")
            elif time.monotonic() - active[i] > 300:
                raise BenchError(f"{kind} process {procs[i].pid}: no heartbeat within 300 s; see {procs[i].logpath}")
        watch.wait(0.02)
    t_started = time.monotonic() - t0
    for pr in procs:
        os.kill(pr.pid, signal.SIGCONT)
    log(f"{kind} rewrite={p}: all {N} reached a heartbeat in {t_started:.0f} s; each took {min(start_s):.2f}-{max(start_s):.2f} s")

    def total():
        return sum(rollup(pr.pid)["Pss"] for pr in procs)

    tot, samples = settle(total, f"{kind} rewrite={p}")
    per = [rollup(pr.pid) for pr in procs]
    tm = [mappings_of(pr.pid, tpl_mem_of(tpl)) for pr in procs] if kind == "clone" else []
    h1 = host()
    check_consoles(consoles, f"{kind} rewrite={p}")
    stop_all(procs, 60)
    watch.close()
    summed = {}
    for r in per:
        for k, v in r.items():
            summed[k] = summed.get(k, 0) + v
    tms = {}
    for r in tm:
        for k, v in r.items():
            tms[k] = tms.get(k, 0) + v
    return {"sum": summed, "per_process_pss": [r["Pss"] for r in per], "template_maps": tms,
            "host_delta": host_delta(h0, h1), "start_s": t_started, "each_start_s": start_s, "samples": samples}


TPL_MEMS = {}


def cow_probe(tpl_mem):
    cmd = [CFG["cow"], tpl_mem, "64", "0", str(N), "0", str(N)]
    p, _ = spawn(cmd, logs("cow_notifier.log"))
    if p.wait(300) != 0:
        raise BenchError(f"cow_notifier failed; see {p.logpath}")
    res = [l for l in open(p.logpath) if l.startswith("RESULT")][-1].split()[1:]
    out = {}
    for x in res:
        k, per, unmap = x[2:].split(":")
        out.setdefault(k, []).append(float(per))
    return out


def tpl_mem_of(tpl):
    return TPL_MEMS[tpl]


# ---------------------------------------------------------------------------------------------

def mib(kib):
    return kib / MIB


def summary(R, env):
    L = []
    p = L.append
    p(f"Clone density: PSS (sum of Pss in /proc/PID/smaps_rollup) with {N} VMs of 256 MiB; MiB, lower is better")
    p(f"guest: {cmdline('P')} (the whole RAM it can use is exercised; banner below)")
    for pr in REWRITES:
        r = R[str(pr)]
        p("")
        p(f"testguest.rewrite={pr}   ({r['banner']})")
        exercised = int(r["banner"].split("mem=")[1]) / 2**20
        s = r["serve"]
        pss0, pss0w, pssn = s["pss0"]["Pss"], s["pss0_warm"]["Pss"], s["pssN"]["Pss"]
        anon = s["template_maps"].get("Anonymous", 0)
        tfile = s["template_maps"].get("Pss", 0) - anon
        per = (pssn - pss0) / N
        dirt = anon / N
        over = (pssn - pss0 - tfile - anon) / N
        overw = (pssn - pss0w - tfile - anon) / N
        p(f"  one `vmm serve`, {N} clones: PSS {mib(pssn):8.1f}  (0 clones {mib(pss0):.1f}; after one clone made and "
          f"destroyed {mib(pss0w):.1f})")
        p(f"    per clone (PSS_N - PSS_0) / N            {mib(per):7.2f}")
        p(f"      of which dirtied guest pages (CoW)     {mib(dirt):7.2f}   ({100 * mib(dirt) / exercised:.1f}% of the exercised memory)")
        p(f"      the template's pages, mapped once      {mib(tfile) / N:7.2f}   ({mib(tfile):.1f} MiB for all {N}: the template file, paid once)")
        p(f"      the rest: VMM overhead per clone       {mib(over):7.2f}   (against the warm baseline: {mib(overw):.2f})")
        p(f"    after destroying all {N}: PSS {mib(s['pss_destroyed']['Pss']):.1f} (warm baseline {mib(pss0w):.1f}); "
          f"destroying them took {s['destroy_s']:.1f} s")
        p(f"    target: <= dirtied + 2 MiB per clone: {mib(over):.2f} MiB overhead -> {'MET' if mib(over) <= 2 else 'MISSED'}")
        hd = s["host_delta"]
        p(f"    host, per clone (meminfo deltas): SecPageTables {hd['SecPageTables'] / N:.2f}, PageTables "
          f"{hd['PageTables'] / N:.2f}, SUnreclaim {hd['SUnreclaim'] / N:.2f}, KernelStack {hd['KernelStack'] / N:.2f}, "
          f"MemAvailable {-hd['MemAvailable'] / N:.2f}")
        c = r.get("clone")
        if c:
            tot = c["sum"]["Pss"]
            anon = c["template_maps"].get("Anonymous", 0)
            tfile = c["template_maps"].get("Pss", 0) - anon
            p(f"  {N} `vmm clone` processes: PSS {mib(tot):8.1f}  = {mib(tot) / N:.1f} per clone: dirtied {mib(anon) / N:.1f}, "
              f"template share {mib(tfile) / N:.1f}, JVM + VMM {mib(tot - anon - tfile) / N:.1f}")
        b = r.get("run")
        if r.get("run_skipped"):
            p(f"  booted VMs: skipped ({r['run_skipped']})")
        if b:
            tot = b["sum"]["Pss"]
            p(f"  {N} booted VMs (`vmm run`):   PSS {mib(tot):8.1f}  = {mib(tot) / N:.1f} per VM")
            if c:
                p(f"    ratio to booted: serve {pssn / tot:.3f} (the whole serve process, its JVM and the template "
                  f"included), per-process clones {c['sum']['Pss'] / tot:.3f}")
        starts = [f"serve {s['start_s']:.0f} s (all {N} requests at once)"]
        for x, name in ((c, "clone processes"), (b, "booted VMs")):
            if x:
                starts.append(f"{name} {x['start_s']:.0f} s (each process, {START_AT_ONCE} starting at a time: "
                              f"median {statistics.median(x['each_start_s']):.2f} s)")
        p(f"  time until every guest showed a heartbeat: {'; '.join(starts)}")
    if R.get("cow"):
        c = R["cow"]
        p("")
        p("one copy-on-write fault (a write from the VMM process, bench/src/main/c/cow_notifier.c), us: " +
          ", ".join(f"{k} VMs in the process {' / '.join(f'{v:.1f}' for v in c[k])}" for k in sorted(c, key=int)))
    p("")
    p(env)
    return "\n".join(L)


def main():
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    set_log(os.path.join(OUT, "driver.log"))
    log(f"driver nice value {raise_priority()} (the processes it starts: 0)")
    load0 = open("/proc/loadavg").read().split()[:3]
    stat0 = cpu_stat()
    t_start = time.monotonic()
    R = {}
    for pr in REWRITES:
        print(f"== rewrite={pr}: template", flush=True)
        tpl, tpl_mem, banner = make_template(pr)
        TPL_MEMS[tpl] = tpl_mem
        r = {"banner": banner}
        if "cow" not in R:
            print(f"== copy-on-write fault cost with 0 and {N} VMs in the process (cow_notifier)", flush=True)
            R["cow"] = cow_probe(tpl_mem)
        print(f"== rewrite={pr}: {N} clones in one `vmm serve`", flush=True)
        need_memory(MEMORY_MIB * N * max(pr, 5) / 100 + 512, "serve")
        r["serve"] = serve_clones(pr, tpl, tpl_mem)
        print(f"== rewrite={pr}: {N} `vmm clone` processes", flush=True)
        need_memory(N * (80 + MEMORY_MIB * max(pr, 5) / 100), "clone processes")
        r["clone"] = processes(pr, "clone", tpl)
        if pr in BOOTED_FOR:
            print(f"== rewrite={pr}: {N} booted VMs (`vmm run`)", flush=True)
            try:
                need_memory(N * (MEMORY_MIB + 70), "booted VMs")
                r["run"] = processes(pr, "run", tpl)
            except MemoryShort as e:
                print(f"   skipped: {e}", flush=True)
                log(f"booted VMs skipped: {e}")
                r["run_skipped"] = str(e)
        R[str(pr)] = r
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(R, f, indent=1)
        remove_template(tpl)        # not needed any more
        os.unlink(tpl_mem)
    steal, idle = steal_idle(stat0, cpu_stat())
    env = (f"load average at start {' '.join(load0)}, at end {' '.join(open('/proc/loadavg').read().split()[:3])}; "
           f"steal {steal:.1f}% of CPU time, idle {idle:.0f}%; measuring took {time.monotonic() - t_start:.0f} s")
    text = summary(R, env)
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        log(f"failed: {e}")
        print(f"density_bench: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_all()
