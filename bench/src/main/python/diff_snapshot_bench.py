#!/usr/bin/env python3
"""Diff and live snapshots (issue 19) beside full ones and beside QEMU 7.2's background-snapshot.
The driver of bench/run-diff-snapshot-bench, whose header says what is measured:

    diff_snapshot_bench.py CONFIG.json     (written by run-diff-snapshot-bench)

Every process it starts goes through benchlib.spawn and is ended when the driver stops.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import run_driver, write_summary, BenchError, Console, DirWatch, JsonLines, loadavg, log, set_log, spawn, stop  # noqa: E402

CFG = json.load(open(sys.argv[1]))
OUT, WORK, JAVA, JAR, QEMU, BIOS = CFG["out"], CFG["work"], CFG["java"], CFG["jar"], CFG["qemu"], CFG["bios"]
SIZES = CFG["sizes"].split()
RATES = [int(r) for r in CFG["rates"].split()]
RUNS = int(CFG["runs"])
HB = int(CFG["hb"])
GAP = float(CFG["gap"])          # s the guest runs between the full snapshot and the diff over it
now = time.perf_counter
WATCH = None
SEQ = [0]


def fresh(name):
    SEQ[0] += 1
    return os.path.join(WORK, f"{SEQ[0]:04d}-{name}")


def mib(size):
    return int(size[:-1]) * (1024 if size.endswith("G") else 1)


def stored_bytes(snap):
    """Bytes the snapshot file occupies (it is sparse: holes cost nothing)."""
    return os.stat(os.path.join(snap, "snapshot.pvm")).st_blocks * 512


def vmm(*args):
    return [JAVA, "-XX:+UseSerialGC", "-jar", JAR] + list(args)


def timed_save(q, console, **args):
    """The snapshot command, timed from sending to the reply, while CPU 0's heartbeats are timestamped:
    returns (reply, wall ms, longest gap between heartbeats around the save in ms)."""
    result = {}

    def send():
        try:
            result["reply"], result["t0"], result["t1"] = q.call("snapshot", **args)
        except BaseException as e:  # noqa: B902 - handed to the main thread
            result["error"] = e

    # The save starts right after a heartbeat seen fresh, so the gap across its pause has both ends.
    c = Console(console)
    c.poll()
    _, i = c.wait(r"hb 0 \d+", WATCH, 30, start=len(c.lines))
    beats = [c.lines[i][0]]
    start = i + 1
    t = threading.Thread(target=send)
    t.start()
    while t.is_alive() or not beats or now() - result.get("t1", now()) < 3 * HB / 1e3:
        c.poll()
        for at, line in c.lines[start:]:
            if re.fullmatch(r"hb 0 \d+", line):
                beats.append(at)
        start = len(c.lines)
        if not t.is_alive() and "error" in result:
            break
        WATCH.wait(0.005)
    t.join()
    bad = c.corrupt()
    c.close()
    if "error" in result:
        raise result["error"]
    if bad:
        raise BenchError(f"the test guest reported CORRUPT memory: {bad[0]}; see {console}")
    gaps = [b - a for a, b in zip(beats, beats[1:]) if b >= result["t0"] and a <= result["t1"] + HB / 1e3]
    return result["reply"], (result["t1"] - result["t0"]) * 1e3, max(gaps, default=0) * 1e3


def panama(size, rate):
    """One guest rewriting `rate` % of 3/4 of its RAM: per run a full snapshot, a diff over it, and
    (rate 10) a live full snapshot and a paused one; the guest runs on after each."""
    mem = f"{mib(size) * 3 // 4}M"
    sock, console = fresh("api.sock"), fresh("console.txt")
    p, _ = spawn(vmm("run", "--memory", size, "--api-socket", sock, "--console", f"file:{console}", "--cmdline",
                     f"console=ttyS0 testguest.mem={mem} testguest.hb={HB} testguest.rewrite={rate}"),
                 os.path.join(OUT, "logs", f"panama-{size}-{rate}.log"))
    c = Console(console)
    c.wait(r"ready", WATCH, 600, p)
    c.wait(r"hb 0 \d+", WATCH, 60, p, start=c.find(r"ready"))
    c.close()
    q = JsonLines(sock, p, timeout=600)
    q.cmd("qmp_capabilities")
    runs = []
    for i in range(RUNS):
        full, diff = fresh(f"full-{size}-{rate}"), fresh(f"diff-{size}-{rate}")
        rf, full_ms, full_gap = timed_save(q, console, path=full, resume=True)
        time.sleep(GAP)
        rd, diff_ms, diff_gap = timed_save(q, console, path=diff, resume=True, type="diff")
        if rd["type"] != "diff":
            raise BenchError(f"asked for a diff, got {rd}")
        r = {"run": i, "full_ms": full_ms, "full_bytes": stored_bytes(full), "full_pause_ms": rf["pause-us"] / 1e3,
             "diff_ms": diff_ms, "diff_bytes": stored_bytes(diff), "diff_pause_ms": rd["pause-us"] / 1e3,
             "full_gap_ms": full_gap, "diff_gap_ms": diff_gap}
        subprocess.run(["rm", "-rf", full, diff])
        if rate == 10:
            live = fresh(f"live-{size}")
            rl, live_ms, live_gap = timed_save(q, console, path=live, resume=True, live=True)
            r.update(live_ms=live_ms, live_pause_ms=rl["pause-us"] / 1e3, live_passes=rl["live-passes"],
                     live_bytes_copied=rl["ram-bytes-written"], live_gap_ms=live_gap)
            subprocess.run(["rm", "-rf", live])
        log(f"panama {size} rewrite={rate}% run {i}: {r}")
        runs.append(r)
        time.sleep(1)
    q.cmd("quit", check=False)
    q.close()
    p.wait(60)
    return runs


def qemu(size):
    """QEMU's RAM a shared file holding as many random bytes as the Panama guest exercises; per run
    a background-snapshot migration to a file (guest running; QEMU write-protects RAM with userfaultfd)."""
    mem = mib(size) * 3 // 4
    ram, sock = fresh("qemu.ram"), fresh("qmp.sock")
    with open(ram, "wb") as f:
        f.truncate(mib(size) << 20)
    subprocess.run(["dd", "if=/dev/urandom", f"of={ram}", "bs=1M", f"count={mem}", "conv=notrunc", "status=none"],
                   check=True)
    p, _ = spawn([QEMU, "-accel", "kvm", "-machine", "q35", "-m", size, "-object",
                  f"memory-backend-file,id=mem,size={size},mem-path={ram},share=on", "-machine", "memory-backend=mem",
                  "-bios", BIOS, "-nographic", "-nodefaults", "-serial", "none", "-qmp", f"unix:{sock},server,nowait"],
                 os.path.join(OUT, "logs", f"qemu-{size}.log"))
    q = JsonLines(sock, p, timeout=600)
    q.cmd("qmp_capabilities")
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "background-snapshot", "state": True}])
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    runs = []
    for i in range(RUNS):
        dest = fresh(f"qemu-{size}.mig")
        _, t0, _ = q.call("migrate", uri=f"exec:cat > {dest}")
        while True:
            st = q.cmd("query-migrate")
            if st.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.005)
        wall = (now() - t0) * 1e3
        if st["status"] != "completed":
            raise BenchError(f"QEMU's background snapshot: {st}")
        r = {"run": i, "wall_ms": wall, "total_ms": st["total-time"], "downtime_ms": st["downtime"],
             "bytes": os.path.getsize(dest)}
        log(f"qemu {size} run {i}: {r}")
        runs.append(r)
        subprocess.run(["rm", "-f", dest])
        time.sleep(1)
    q.cmd("quit", check=False)
    q.close()
    p.wait(60)
    subprocess.run(["rm", "-f", ram])
    return runs


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=0):
    return "-" if x is None else f"{x:.{digits}f}"


def summary(R):
    lines = [f"diff/live snapshot bench, {R['date']}, {RUNS} run(s), medians; snapshots on tmpfs; heartbeat {HB} ms",
             "Panama: the test guest rewriting N % of 3/4 of its RAM, snapshots through the API with resume;"
             " QEMU: background-snapshot of a guest that halts (RAM: random bytes, as much)", ""]
    for case in R["cases"]:
        size = case["size"]
        lines.append(f"{size} guest:")
        lines.append(f"  {'':<22} {'wall ms':>8} {'paused ms':>9} {'hb gap ms':>9} {'MiB stored':>10}")
        for rate, runs in sorted(case["panama"].items()):
            for kind in ("full", "diff"):
                lines.append(f"  {kind + ' (rewrite ' + str(rate) + '%)':<22} {fmt(med([r[kind + '_ms'] for r in runs])):>8} "
                             f"{fmt(med([r[kind + '_pause_ms'] for r in runs]), 1):>9} "
                             f"{fmt(med([r[kind + '_gap_ms'] for r in runs])):>9} "
                             f"{fmt(med([r[kind + '_bytes'] / 2**20 for r in runs]), 1):>10}")
            f_ms, d_ms = med([r["full_ms"] for r in runs]), med([r["diff_ms"] for r in runs])
            f_b, d_b = med([r["full_bytes"] for r in runs]), med([r["diff_bytes"] for r in runs])
            lines.append(f"    diff / full at {rate}%: time {d_ms / f_ms:.3f}x, bytes {d_b / f_b:.3f}x")
        live = [r for r in case["panama"].get(10, []) if "live_ms" in r]
        if live:
            lines.append(f"  {'live (rewrite 10%)':<22} {fmt(med([r['live_ms'] for r in live])):>8} "
                         f"{fmt(med([r['live_pause_ms'] for r in live]), 1):>9} "
                         f"{fmt(med([r['live_gap_ms'] for r in live])):>9} {'':>10}"
                         f"  passes {fmt(med([r['live_passes'] for r in live]))}")
        qr = case["qemu"]
        lines.append(f"  {'QEMU background-snap.':<22} {fmt(med([r['wall_ms'] for r in qr])):>8} "
                     f"{fmt(med([r['downtime_ms'] for r in qr]), 1):>9} {'-':>9} "
                     f"{fmt(med([r['bytes'] / 2**20 for r in qr]), 1):>10}  (QEMU's total-time {fmt(med([r['total_ms'] for r in qr]))} ms)")
        if live:
            lp, qd = med([r["live_pause_ms"] for r in live]), med([r["downtime_ms"] for r in qr])
            lw, qw = med([r["live_ms"] for r in live]), med([r["wall_ms"] for r in qr])
            lines.append(f"    live / QEMU background-snapshot: pause {lp / max(qd, 0.001):.2f}x, total {lw / qw:.2f}x")
        lines.append("")
    return "\n".join(lines)


def main():
    global WATCH
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    set_log(os.path.join(OUT, "driver.log"))
    for k in ("PANAMA_VMM_REHEARSAL", "JAVA_TOOL_OPTIONS"):
        os.environ.pop(k, None)
    WATCH = DirWatch(WORK)
    R = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": loadavg(), "cases": []}
    try:
        for size in SIZES:
            case = {"size": size, "panama": {}, "qemu": []}
            R["cases"].append(case)
            for rate in RATES:
                print(f"== {size} guest rewriting {rate}%", flush=True)
                case["panama"][rate] = panama(size, rate)
                time.sleep(3)   # freed memory goes back to the outer host (ENVIRONMENT.md)
            print(f"== {size} QEMU background-snapshot", flush=True)
            case["qemu"] = qemu(size)
            time.sleep(3)
        R["load_after"] = loadavg()
    finally:
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(R, f, indent=1)
    write_summary(OUT, R, summary)


if __name__ == "__main__":
    run_driver("diff_snapshot_bench", main)
