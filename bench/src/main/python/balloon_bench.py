#!/usr/bin/env python3
"""Density with the balloon: N clones in one `vmm serve` whose guests each dirty 64 MiB (25 % of a
256 MiB VM) and report it free, against the same clones without free page reporting. The driver
of bench/run-balloon-bench, which copies the VMM's jars and cleans up after it; the script's
header says what is measured. This file only measures and summarises:

    balloon_bench.py CONFIG.json     (written by run-balloon-bench)
"""
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BenchError, Console, DirWatch, JsonLines, cpu_stat, log, mappings_of, meminfo, raise_priority,
                      remove_template, rollup, run_driver, set_log, spawn, steal_idle, write_summary)

CFG = json.load(open(sys.argv[1]))
OUT, WORK = CFG["out"], CFG["work"]
JAVA, JAR = CFG["java"], CFG["jar"]
N = int(CFG["n"])
DIRTY_HB = int(CFG["dirty"])
SETTLE_S = float(CFG["settle_s"])
MEMORY = "256M"
REGION_PAGES = 64 * 256
JAVA_CMD = [JAVA, "-XX:+UseSerialGC", "-Xshare:auto", "-jar", JAR]
MIB = 1024.0   # KiB per MiB
VARIANTS = (("with reporting", "reporting"), ("without reporting", "deflate-on-oom"))


def cmdline():
    return (f"console=ttyS0 testguest.mem=64M testguest.hb=500 testguest.rewrite=0 "
            f"testguest.balloon=size=64M,dirty={DIRTY_HB},hold=2")


def logs(name):
    return os.path.join(OUT, "logs", name)


def used_kib():
    m = meminfo()
    return m["MemTotal"] - m["MemAvailable"]


def settle(pss_of, label):
    """Samples PSS (KiB) every 2 s until it moved by < 0.5 % over 10 s, and for at least SETTLE_S s."""
    t0 = time.monotonic()
    samples = [pss_of()]
    while True:
        time.sleep(2)
        samples.append(pss_of())
        if len(samples) > 5 and time.monotonic() - t0 >= SETTLE_S and abs(samples[-1] - samples[-6]) <= 0.005 * samples[-6]:
            break
        if time.monotonic() - t0 > 600:
            log(f"{label}: PSS still moving after 600 s: {samples[-5:]}")
            break
    log(f"{label}: PSS samples (MiB) {[round(s / MIB) for s in samples]}")
    return samples[-1]


def make_template(name, balloon):
    tpl = os.path.join(WORK, f"tpl-{name}")
    con = os.path.join(WORK, f"tpl-{name}.log")
    cmd = JAVA_CMD + ["template", "create", tpl, "--mem-dir", WORK, "--memory", MEMORY, "--cmdline", cmdline(),
                      "--balloon", balloon, "--console", f"file:{con}"]
    p, _ = spawn(cmd, logs(f"template-{name}.log"))
    try:
        rc = p.wait(180)
    except subprocess.TimeoutExpired:
        raise BenchError(f"template create {name} did not end within 180 s; see {p.logpath}")
    if rc != 0:
        raise BenchError(f"template create {name} exited with {rc}; see {p.logpath}")
    return tpl, os.path.realpath(os.path.join(tpl, "memory.ram"))


def balloon_line(console):
    """The guest's last `balloon reported=...` line as a dict of ints, or None."""
    for _, text in reversed(console.lines):
        if text.startswith("balloon reported="):
            return {k: int(v) for k, v in (kv.split("=") for kv in text.split()[1:])}
    return None


def wait_all(consoles, proc, watch, done, label, timeout=900):
    deadline = time.monotonic() + timeout
    pending = list(consoles)
    while pending:
        for c in list(pending):
            c.poll()
            if done(c):
                pending.remove(c)
        if proc.poll() is not None:
            raise BenchError(f"serve exited ({proc.returncode}) while waiting for {label}; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"{len(pending)} clones never showed {label} within {timeout} s (e.g. {pending[0].path})")
        watch.wait(0.1)
    log(f"every console shows {label}")


def heartbeats(c):
    last = 0
    for _, text in c.lines:
        if text.startswith("hb 0 "):
            last = int(text[5:])
    return last


def measure(proc, tpl_mem):
    t = mappings_of(proc.pid, tpl_mem)
    return {"pss": rollup(proc.pid)["Pss"], "used": used_kib(), "anon": t.get("Anonymous", 0), "rss": t.get("Rss", 0)}


def before(proc, tpl_mem, consoles, label):
    """The clones before any guest dirtied: sampled every 2 s until PSS moved by < 0.5 % over 4 s
    (the guests' first passes over the template's pages map them slowly here); a sample taken once
    a guest has dirtied (copy-on-write copies grew) is not used. Returns (the sample, guests that had dirtied by then)."""
    samples = [measure(proc, tpl_mem)]
    while True:
        time.sleep(2)
        for c in consoles:
            c.poll()
        dirtied = sum(1 for c in consoles if (balloon_line(c) or {}).get("dirtied", 0) > 0)
        if dirtied:
            # the latest sample with no more copy-on-write copies than the first (a guest may have
            # dirtied a moment before its console said so)
            clean = [x for x in samples if x["anon"] <= samples[0]["anon"] + 1024 * N]
            log(f"{label}: {dirtied} guests dirtied before PSS settled; samples {samples}")
            return clean[-1], dirtied
        samples.append(measure(proc, tpl_mem))
        if len(samples) >= 3 and abs(samples[-1]["pss"] - samples[-3]["pss"]) <= 0.005 * samples[-3]["pss"]:
            log(f"{label} before: PSS samples (MiB) {[round(x['pss'] / MIB) for x in samples]}")
            return samples[-1], 0


def variant(name, balloon):
    print(f"== {name}: template (--balloon {balloon})", flush=True)
    tpl, tpl_mem = make_template(name.split()[0], balloon)
    consdir = os.path.join(WORK, f"serve-{name.split()[0]}")
    os.makedirs(consdir)
    sock = os.path.join(WORK, f"serve-{name.split()[0]}.sock")
    proc, _ = spawn(JAVA_CMD[:1] + ["-Xms8m"] + JAVA_CMD[1:] + ["serve", "--api-socket", sock, "--console-dir", consdir],
                    logs(f"serve-{name.split()[0]}.log"))
    api = JsonLines(sock, proc)
    watch = DirWatch(consdir)
    time.sleep(1)
    r = {"empty": measure(proc, tpl_mem)}
    print(f"== {name}: {N} clones in one `vmm serve`", flush=True)
    consoles = []
    for _ in range(N):
        ret = api.cmd("clone", template=tpl)
        consoles.append(Console(ret["clones"][0]["console"]))
    wait_all(consoles, proc, watch, lambda c: heartbeats(c) >= 2, "hb 0 2")
    r["before"], early = before(proc, tpl_mem, consoles, name)
    r["dirtied_before_measured"] = early
    print(f"== {name}: waiting for every guest to dirty its 64 MiB"
          + (" and report it free" if balloon == "reporting" else ""), flush=True)
    marks = {}

    def finished(c):
        b = balloon_line(c)
        if not b or b["dirtied"] < REGION_PAGES or (balloon == "reporting" and b["reported"] < REGION_PAGES):
            return False
        marks.setdefault(c.path, heartbeats(c))
        return heartbeats(c) >= marks[c.path] + 4

    wait_all(consoles, proc, watch, finished, "the region dirtied" + (" and reported" if balloon == "reporting" else ""))
    settle(lambda: rollup(proc.pid)["Pss"], f"{name} after")
    r["after"] = measure(proc, tpl_mem)
    bad = [l for c in consoles for l in c.corrupt()]
    if bad:
        raise BenchError(f"{name}: a guest reported CORRUPT: {bad[0]}")
    api.cmd("quit")
    api.close()
    watch.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"serve did not exit after quit; see {proc.logpath}")
    remove_template(tpl)
    os.unlink(tpl_mem)
    return r


def summary(R):
    L = []
    p = L.append
    p(f"balloon density: {N} clones of a 256 MiB template in one `vmm serve`, each guest dirtying 64 MiB (25 %)")
    p("  MiB                     serve PSS: before   after  (after-before)/clone | copy-on-write copies: before   after"
      " | host used: after-before")
    for name, _ in VARIANTS:
        r = R.get(name)
        if not r:
            continue
        b, a = r["before"], r["after"]
        p(f"  {name:<22}            {b['pss'] / MIB:8.0f} {a['pss'] / MIB:7.0f}  {(a['pss'] - b['pss']) / MIB / N:8.2f}"
          f"            |                      {b['anon'] / MIB:6.0f} {a['anon'] / MIB:7.0f} |"
          f"  {(a['used'] - b['used']) / MIB:8.0f}")
        if r["dirtied_before_measured"]:
            p(f"    ({r['dirtied_before_measured']} guests dirtied before PSS settled: 'before' is the last sample with no"
              f" copies yet, taken while the guests still mapped template pages; raise BALLOON_DIRTY_HB)")
    w, wo = R.get(VARIANTS[0][0]), R.get(VARIANTS[1][0])
    if w and wo:
        p(f"  after, with/without reporting: serve PSS {w['after']['pss'] / wo['after']['pss']:.3f}; what the dirtying "
          f"cost per clone: {(w['after']['pss'] - w['before']['pss']) / MIB / N:.2f} MiB with, "
          f"{(wo['after']['pss'] - wo['before']['pss']) / MIB / N:.2f} MiB without")
    p(f"  {R.get('env', '')}")
    return "\n".join(L)


def main():
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    set_log(os.path.join(OUT, "driver.log"))
    log(f"driver nice value {raise_priority()} (the processes it starts: 0)")
    avail = meminfo()["MemAvailable"] / MIB
    if avail < N * 80 + 1024:
        raise BenchError(f"{N} clones need about {N * 80 + 1024} MiB (64 MiB dirtied each and a spare GiB); "
                         f"{avail:.0f} MiB are available: lower BALLOON_N")
    load0 = open("/proc/loadavg").read().split()[:3]
    stat0 = cpu_stat()
    t0 = time.monotonic()
    R = {}
    try:
        for name, balloon in VARIANTS:
            R[name] = variant(name, balloon)
            time.sleep(3)   # the outer host takes freed memory back a moment later (docs/benchmarks.md)
        steal, idle = steal_idle(stat0, cpu_stat())
        R["env"] = (f"load average at start {' '.join(load0)}, at end {' '.join(open('/proc/loadavg').read().split()[:3])}; "
                    f"steal {steal:.1f}%, idle {idle:.0f}%; measuring took {time.monotonic() - t0:.0f} s")
    finally:
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(R, f, indent=1)
    write_summary(OUT, R, summary)


if __name__ == "__main__":
    run_driver("balloon_bench", main)
