#!/usr/bin/env python3
"""Clone latency: `vmm serve`, one process per clone, and QEMU's templating side by side.
The driver of bench/run-clone-bench, which builds, installs QEMU, copies the VMM's jars, builds
the C floor probe and the halting BIOS, and cleans up after it; the script's header says what is
measured. This file only measures and summarises:

    clone_bench.py CONFIG.json     (written by run-clone-bench)
"""
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (save_qemu_template, BenchError, Console, DirWatch, JsonLines, cpu_stat, end_all, fmt_ms, log, now,
                             pct, raise_priority, set_log, spawn, steal_idle, stop)

CFG = json.load(open(sys.argv[1]))
OUT, WORK = CFG["out"], CFG["work"]
JAVA, JAR, AOT = CFG["java"], CFG["jar"], CFG["aot"]
QEMU, BIOS, FLOOR = CFG["qemu"], CFG["bios"], CFG["floor"]
N_SERVE, WARMUP = int(CFG["n_serve"]), int(CFG["warmup"])
KEEP, N_LOAD = int(CFG["keep"]), int(CFG["n_load"])
N_PROC, N_FLOOR = int(CFG["n_proc"]), int(CFG["n_floor"])
GAP = float(CFG["gap_ms"]) / 1e3
MEMORY = "256M"
CMDLINE = "console=ttyS0 testguest.mem=200M testguest.hb=10"
JAVA_FLAGS = ["-XX:+UseSerialGC"]    # as ./vmm (+ -Xshare:auto)
HB = r"hb \d+ \d+"
GENID = r"genid 0x[0-9a-f]{16}"


def logs(name):
    return os.path.join(OUT, "logs", name)


def java_cmd(aot=None):
    """aot: None (no cache), "use" or "train"."""
    flags = list(JAVA_FLAGS)
    if aot == "use":   # AOTMode=on: fail rather than run on silently without the cache
        flags += [f"-XX:AOTCache={AOT}", "-XX:AOTMode=on"]
    elif aot == "train":
        flags.append(f"-XX:AOTCacheOutput={AOT}")
    else:
        flags.append("-Xshare:auto")  # as ./vmm; -Xshare cannot go with -XX:AOTCache
    return [JAVA] + flags + ["-jar", JAR]


def run_to_end(cmd, name, timeout=180):
    p, _ = spawn(cmd, logs(name))
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd[:8])}... did not end within {timeout} s; see {p.logpath}")
    if rc != 0:
        raise BenchError(f"{' '.join(cmd[:8])}... exited with {rc}; see {p.logpath}")
    return open(p.logpath).read()


# ---------------------------------------------------------------------------------------------
# The template

TPL = os.path.join(WORK, "tpl")


def make_template():
    run_to_end(java_cmd() + ["template", "create", TPL, "--mem-dir", WORK, "--memory", MEMORY,
                             "--cmdline", CMDLINE, "--console", f"file:{os.path.join(WORK, 'tpl-console.log')}"],
               "template-create.log")
    text = run_to_end(java_cmd() + ["template", "inspect", TPL], "template-inspect.log")
    shutil.copy(os.path.join(WORK, "tpl-console.log"), os.path.join(OUT, "template-console.log"))
    return os.path.realpath(os.path.join(TPL, "memory.ram")), text


# ---------------------------------------------------------------------------------------------
# 1. Clone latency in `vmm serve`

def serve_series(label, n, warmup, keep):
    """n measured clones after warmup ones; keep: how many of the latest clones stay running."""
    consdir = os.path.join(WORK, f"serve-{label}")
    os.makedirs(consdir)
    sock = os.path.join(WORK, f"serve-{label}.sock")
    cmd = java_cmd()
    cmd.insert(1, "-Xms8m")   # as ./vmm starts serve
    p, _ = spawn(cmd + ["serve", "--api-socket", sock, "--console-dir", consdir], logs(f"serve-{label}.log"))
    api = JsonLines(sock, p)
    watch = DirWatch(consdir)
    running = deque()
    rows, destroys, corrupt = [], [], []

    def destroy(cid, con):
        corrupt.extend(con.corrupt())
        _, d0, d1 = api.call("destroy", id=cid)
        destroys.append((d1 - d0) * 1e3)
        con.close()

    for i in range(warmup + n):
        time.sleep(GAP)
        ret, t0, t1 = api.call("clone", template=TPL)
        c = ret["clones"][0]
        cid, genid = c["id"], c["generation-id"]
        con = Console(c["console"])
        tf, fi = con.wait(r".*", watch, 30, p)
        th, _ = con.wait(HB, watch, 30, p)
        gi = con.find(GENID)
        q = api.cmd("query-clones")
        entry = next(x for x in q if x["id"] == cid)
        row = {"i": i, "warmup": i < warmup, "id": cid, "reply_ms": (t1 - t0) * 1e3, "duration_ms": ret["duration-ms"],
               "first_entry_ms": entry["first-entry-ms"], "first_line_ms": (tf - t0) * 1e3,
               "first_hb_ms": (th - t0) * 1e3, "first_line": con.lines[fi][1],
               "genid_ok": gi is not None and con.lines[gi][1] == f"genid {genid}", "running": len(running)}
        rows.append(row)
        running.append((cid, con))
        while len(running) > keep:
            destroy(*running.popleft())
    while running:
        destroy(*running.popleft())
    api.cmd("quit")
    api.close()
    watch.close()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"serve did not exit after quit; see {p.logpath}")
    if corrupt:
        raise BenchError(f"a clone's guest reported CORRUPT memory: {corrupt[0]}")
    return {"rows": rows, "destroy_ms": destroys}


def floor(extra, tag):
    cmd = [FLOOR, "-n", str(N_FLOOR)] + extra + [TPL_MEM, "256"]
    out = run_to_end(cmd, f"floor-{tag}.log")
    res = [l for l in out.splitlines() if l.startswith("RESULT")]
    if not res:
        raise BenchError(f"clone_floor printed no RESULT; see {logs(f'floor-{tag}.log')}")
    kv = dict(x.split("=") for x in res[-1].split() if "=" in x)
    f = res[-1].split()
    # RESULT clone_us p50=.. p99=.. run_us p50=.. teardown_us p50=.. p99=.. n=..
    return {"clone_p50_ms": float(f[2].split("=")[1]) / 1e3, "clone_p99_ms": float(f[3].split("=")[1]) / 1e3,
            "teardown_p50_ms": float(f[7].split("=")[1]) / 1e3, "teardown_p99_ms": float(f[8].split("=")[1]) / 1e3,
            "n": int(kv["n"]), "table": "\n".join(l for l in out.splitlines() if not l.startswith(("$", "RESULT")))}


# ---------------------------------------------------------------------------------------------
# 2. One process per clone: `vmm clone` (with and without an AOT cache) and QEMU

PP = os.path.join(WORK, "proc")
SEQ = [0]


def panama_proc(aot, tag):
    SEQ[0] += 1
    conpath = os.path.join(PP, f"{SEQ[0]:03d}-{tag}.log")
    p, t0 = spawn(java_cmd(aot) + ["clone", TPL, "--console", f"file:{conpath}"], logs(f"proc-{tag}.log"), quiet=True)
    con = Console(conpath)
    tf, fi = con.wait(r".*", PP_WATCH[0], 60, p)
    th, _ = con.wait(HB, PP_WATCH[0], 60, p)
    ts = now()
    exit_s = stop(p)
    bad = con.corrupt()
    if bad:
        raise BenchError(f"the clone reported CORRUPT memory: {bad[0]} ({conpath})")
    if p.returncode not in (0, -15):
        raise BenchError(f"vmm clone exited with {p.returncode} after SIGTERM; see {p.logpath}")
    return {"first_line_ms": (tf - t0) * 1e3, "first_hb_ms": (th - t0) * 1e3, "first_line": con.lines[fi][1],
            "exit_ms": exit_s * 1e3, "alive_ms": (ts - t0) * 1e3}


PP_WATCH = [None]
QEMU_MEM = os.path.join(WORK, "qemu-tpl.ram")
QEMU_MIG = os.path.join(WORK, "qemu-tpl.mig")


def qemu_cmd(share, sock, incoming):
    cmd = [QEMU, "-accel", "kvm", "-machine", "q35", "-m", MEMORY,
           "-object", f"memory-backend-file,id=mem,size={MEMORY},mem-path={QEMU_MEM},share={'on' if share else 'off'}",
           "-machine", "memory-backend=mem", "-bios", BIOS, "-nographic", "-nodefaults", "-serial", "none",
           "-qmp", f"unix:{sock},server=on,wait=off"]
    if incoming:   # QEMU 7.2 has no command-line switch for x-ignore-shared: set over QMP first
        cmd += ["-incoming", "defer"]
    return cmd


def qemu_template():
    """QEMU's docs/vm-templating: a template VM with share=on RAM, saved with x-ignore-shared."""
    shutil.copyfile(TPL_MEM, QEMU_MEM)      # the same bytes as the VMM's template
    sock = os.path.join(WORK, "qemu-tpl.sock")
    save_qemu_template(qemu_cmd(True, sock, False), sock, logs("qemu-template.log"), QEMU_MIG)
    return os.path.getsize(QEMU_MIG)


def qemu_proc(tag):
    SEQ[0] += 1
    sock = os.path.join(PP, f"{SEQ[0]:03d}-{tag}.sock")
    p, t0 = spawn(qemu_cmd(False, sock, True), logs(f"proc-{tag}.log"), quiet=True)
    q = JsonLines(sock, p, poll=0.0005)
    q.cmd("qmp_capabilities")
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
    q.cmd("migrate-incoming", uri=f"exec:cat {QEMU_MIG}")
    deadline = time.monotonic() + 30
    while True:
        st, _, t1 = q.call("query-status")
        if st["status"] == "running":
            break
        if time.monotonic() > deadline:
            raise BenchError(f"QEMU clone not running after 30 s (status {st['status']}); see {p.logpath}")
    resume = [t for t, e in q.events if e.get("event") == "RESUME"]
    q.cmd("quit")
    q.close()
    p.wait(30)
    return {"running_ms": (t1 - t0) * 1e3, "qmp_connect_ms": (q.connected - t0) * 1e3,
            "resume_event_ms": (resume[0] - t0) * 1e3 if resume else None}


def aot_train():
    """One `vmm clone` under -XX:AOTCacheOutput, to its first heartbeat, then SIGTERM (a normal exit
    for the VMM, at which the JVM writes the cache)."""
    if os.path.exists(AOT):
        os.unlink(AOT)
    conpath = os.path.join(PP, "aot-train.log")
    p, _ = spawn(java_cmd("train") + ["clone", TPL, "--console", f"file:{conpath}"], logs("aot-train.log"))
    Console(conpath).wait(HB, PP_WATCH[0], 60, p)
    time.sleep(0.5)
    stop(p, 120)
    if not os.path.exists(AOT):
        raise BenchError(f"the training run wrote no AOT cache {AOT}; see {p.logpath}")


# ---------------------------------------------------------------------------------------------
# Summary

def col(rows, key):
    return [r[key] for r in rows if not r["warmup"] and r[key] is not None]


def summary(R, env):
    L = []
    p = L.append
    s = R["serve"]["rows"]
    n = len([r for r in s if not r["warmup"]])
    p(f"Clone latency in `vmm serve`, 256 MiB template ({CMDLINE}); ms, lower is better")
    p(f"  {n} clones after {WARMUP} warm-up ones, one at a time, {GAP * 1e3:.0f} ms apart, each destroyed after its first hb line")
    p(f"  request -> reply (client)          {fmt_ms(col(s, 'reply_ms'))}")
    p(f"  request -> first KVM_RUN (VMM)     {fmt_ms(col(s, 'first_entry_ms'))}   (query-clones first-entry-ms)")
    p(f"  request -> first console line      {fmt_ms(col(s, 'first_line_ms'))}")
    p(f"  request -> first hb line           {fmt_ms(col(s, 'first_hb_ms'))}")
    p(f"  destroy (client)                   {fmt_ms(R['serve']['destroy_ms'][WARMUP:])}")
    first = s[0]
    p(f"  first clone of the process (cold): reply {first['reply_ms']:.1f}, first KVM_RUN {first['first_entry_ms']:.1f}, "
      f"first line {first['first_line_ms']:.1f}, first hb {first['first_hb_ms']:.1f}")
    lines = sorted(set(r["first_line"].split(" ")[0] for r in s))
    p(f"  clones' first line: {', '.join(lines)}; genid line = the id the reply gave: "
      f"{sum(r['genid_ok'] for r in s)}/{len(s)}")
    fe = pct(col(s, "first_entry_ms"), 50)
    p(f"  target p50 <= 5 ms to guest running: p50 {fe:.2f} ms -> {'MET' if fe <= 5 else 'MISSED'}")
    if R.get("load"):
        sl = R["load"]["rows"]
        p(f"  with the {KEEP} latest clones kept running (each guest rewrites its memory: {KEEP} busy vCPUs on "
          f"{os.cpu_count()} cores), {len(col(sl, 'reply_ms'))} clones:")
        p(f"    request -> reply                 {fmt_ms(col(sl, 'reply_ms'))}")
        p(f"    request -> first KVM_RUN         {fmt_ms(col(sl, 'first_entry_ms'))}")
        p(f"    request -> first hb line         {fmt_ms(col(sl, 'first_hb_ms'))}")
    p("")
    p(f"The kernel's floor: bench/src/main/c/clone_floor.c, {N_FLOOR} VMs, 256 MiB private mapping of the template file; ms")
    for tag, label in (("vmm-order", "VMM's order (irqchip, PIT, memslot; CPUID each time)"),
                       ("memslot-first", "memslot right after KVM_CREATE_VM, CPUID cached")):
        f = R["floor"][tag]
        p(f"  {label:54s} clone p50 {f['clone_p50_ms']:6.2f} p99 {f['clone_p99_ms']:6.2f}   teardown p50 {f['teardown_p50_ms']:6.2f}")
    p("")
    q = R["proc"]
    qa, qb = [r["running_ms"] for r in q["qemu_before"]], [r["running_ms"] for r in q["qemu_after"]]
    pj = [r["first_line_ms"] for r in q["panama_jit"]]
    pa = [r["first_line_ms"] for r in q["panama_aot"]]
    p(f"One process per clone, exec -> clone running; {N_PROC} runs each; ms")
    p(f"  QEMU 7.2 -incoming, x-ignore-shared, query-status running    before {fmt_ms(qa)}")
    p(f"                                                                after  {fmt_ms(qb)}")
    p(f"  Panama `vmm clone`, first console line, no AOT cache                 {fmt_ms(pj)}")
    p(f"  Panama `vmm clone`, first console line, AOT cache                    {fmt_ms(pa)}")
    p(f"    (first hb line: no AOT p50 {pct([r['first_hb_ms'] for r in q['panama_jit']], 50):.1f}, "
      f"AOT p50 {pct([r['first_hb_ms'] for r in q['panama_aot']], 50):.1f}; QEMU QMP connect p50 "
      f"{pct([r['qmp_connect_ms'] for r in q['qemu_before'] + q['qemu_after']], 50):.1f})")
    qref = min(pct(qa, 50), pct(qb, 50))
    drift = abs(pct(qa, 50) - pct(qb, 50)) / max(1e-9, qref)
    for label, xs in (("no AOT", pj), ("AOT", pa)):
        r = pct(xs, 50) / qref
        p(f"  ratio Panama ({label}) / QEMU, p50: {r:.2f}x  target faster than QEMU: {'MET' if r < 1 else 'MISSED'}")
    if drift > 0.10:
        p(f"  note: the two QEMU runs disagree by {100 * drift:.0f}% (the machine drifted); QEMU reference = the faster")
    p("")
    p(env)
    return "\n".join(L)


def main():
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    set_log(os.path.join(OUT, "driver.log"))
    log(f"driver nice value {raise_priority()} (the processes it starts: 0)")
    os.makedirs(PP)
    PP_WATCH[0] = DirWatch(PP)
    load0 = open("/proc/loadavg").read().split()[:3]
    stat0 = cpu_stat()
    t_start = time.monotonic()
    global TPL_MEM
    print("== template (256 MiB, booted to ready)", flush=True)
    TPL_MEM, inspect = make_template()
    with open(os.path.join(OUT, "template.txt"), "w") as f:
        f.write(inspect)
    R = {}
    print(f"== serve: {WARMUP} + {N_SERVE} clones, one at a time", flush=True)
    R["serve"] = serve_series("seq", N_SERVE, WARMUP, 0)
    if KEEP > 0 and N_LOAD > 0:
        print(f"== serve: {N_LOAD} clones, the {KEEP} latest kept running", flush=True)
        R["load"] = serve_series("load", N_LOAD, KEEP, KEEP)
    print("== the kernel's floor (clone_floor)", flush=True)
    R["floor"] = {"vmm-order": floor([], "vmm-order"), "memslot-first": floor(["-m", "-c"], "memslot-first")}
    print("== QEMU template", flush=True)
    R["qemu_migration_bytes"] = qemu_template()
    if CFG["train_aot"]:
        print("== AOT training run", flush=True)
        aot_train()
    Q = {"qemu_before": [], "qemu_after": [], "panama_jit": [], "panama_aot": []}
    print(f"== per process: QEMU, Panama (no AOT / AOT, alternating), QEMU again; {N_PROC} runs each", flush=True)
    for i in range(N_PROC):
        Q["qemu_before"].append(qemu_proc(f"qemu-before-{i}"))
    for i in range(N_PROC):
        for name in (("jit", "aot") if i % 2 == 0 else ("aot", "jit")):
            Q[f"panama_{name}"].append(panama_proc("use" if name == "aot" else None, f"panama-{name}-{i}"))
    for i in range(N_PROC):
        Q["qemu_after"].append(qemu_proc(f"qemu-after-{i}"))
    R["proc"] = Q
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(R, f, indent=1)
    steal, idle = steal_idle(stat0, cpu_stat())
    env = (f"load average at start {' '.join(load0)}, at end {' '.join(open('/proc/loadavg').read().split()[:3])}; "
           f"steal {steal:.1f}% of CPU time, idle {idle:.0f}%; measuring took {time.monotonic() - t_start:.0f} s")
    text = summary(R, env)
    for tag in ("vmm-order", "memslot-first"):
        text += f"\n\nclone_floor, {tag}:\n" + R["floor"][tag]["table"]
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        log(f"failed: {e}")
        print(f"clone_bench: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_all()
