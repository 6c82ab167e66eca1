#!/usr/bin/env python3
"""Live-update (local migration) downtime: Panama VMM vs QEMU 7.2 with x-ignore-shared.

Driven by bench/run-migrate-bench, which prepares the VMM copy, QEMU and the scratch directory
and cleans up after this script. What runs and how to read it: the header of run-migrate-bench
and docs/benchmarks.md. Self-contained on purpose (the other bench drivers are being edited).
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

from benchlib import BenchError, JsonLines

E = os.environ
# run and restore warm up only when asked (issue 15); these rows measure warm VMM processes, as before.
os.environ.setdefault("PANAMA_VMM_REHEARSAL", "background")
WORK = E["MIGBENCH_WORK"]          # scratch directory on /dev/shm
OUT = E["MIGBENCH_OUT"]            # bench/results/migrate-<time>
JAVA = E["MIGBENCH_JAVA"]
JAR = E["MIGBENCH_JAR"]
AOT = E.get("MIGBENCH_AOT_FILE", "")   # "" = no AOT cache
QEMU = E["MIGBENCH_QEMU"]
N = int(E["MIGBENCH_N"])           # measured migrations per chain
WARMUP = int(E["MIGBENCH_WARMUP"])  # unmeasured migrations first in each chain
SIZES = E["MIGBENCH_SIZES"].split(",")
HB = int(E["MIGBENCH_HB"])         # guest heartbeat period, ms
SETTLE = float(E.get("MIGBENCH_SETTLE", "1.0"))  # s of quiet after a destination is up
GUEST_MEM = E.get("MIGBENCH_GUEST_MEM", "64M")
DISK_QD = int(E.get("MIGBENCH_DISK_QD", "16"))  # requests the busy-disk guest keeps in flight
CMDLINE = f"console=ttyS0 testguest.mem={GUEST_MEM} testguest.hb={HB}"
LOGS = os.path.join(OUT, "logs")
PROCS = []
_log = open(os.path.join(OUT, "driver.log"), "a")


def log(msg):
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    _log.write(line + "\n")
    _log.flush()
    print(line, flush=True)


def spawn(cmd, name):
    path = os.path.join(LOGS, name + ".log")
    f = open(path, "ab")
    f.write(("$ " + " ".join(cmd) + "\n").encode())
    f.flush()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    f.close()
    p.logpath = path
    PROCS.append(p)
    return p


def stop(p, timeout=15):
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def end_all():
    for p in PROCS:
        stop(p, 10)


def _on_signal(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


for _s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_s, _on_signal)


def wait_path(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before creating {path}; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"{path} did not appear within {timeout} s; see {proc.logpath}")
        time.sleep(0.005)


def ev_time(e):
    return e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6


HB_RE = re.compile(rb"^hb 0 (\d+)$")


class HbStamps(threading.Thread):
    """Polls two console files every 0.5 ms and stamps (host CLOCK_MONOTONIC) each new `hb 0 N`
    line when it is first seen: the last one of the source and the first of the destination."""

    def __init__(self, src, dst):
        super().__init__(daemon=True)
        self.files = [src, dst]
        self.pos = [os.path.getsize(src) if os.path.exists(src) else 0, 0]
        self.part = [b"", b""]
        self.last = [None, None]     # (time, seq) of the latest hb line seen
        self.first_dst = None
        self.corrupt = False
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            t = time.monotonic()
            for i, path in enumerate(self.files):
                try:
                    with open(path, "rb") as f:
                        f.seek(self.pos[i])
                        data = f.read()
                except FileNotFoundError:
                    continue
                if not data:
                    continue
                self.pos[i] += len(data)
                lines = (self.part[i] + data).split(b"\n")
                self.part[i] = lines.pop()
                for line in lines:
                    if b"CORRUPT" in line and not self.corrupt:
                        self.corrupt = line.decode(errors="replace").strip()
                    m = HB_RE.match(line.strip())
                    if m:
                        self.last[i] = (t, int(m.group(1)))
                        if i == 1 and self.first_dst is None:
                            self.first_dst = (t, int(m.group(1)))
            time.sleep(0.0005)

    def stop(self):
        self.halt.set()
        self.join(5)


def wait_hb(console, proc, timeout=300, after=0):
    """Waits for a heartbeat line numbered > after in console; returns its number."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(console, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if b"CORRUPT" in data:
            raise BenchError(f"CORRUPT in {console}")
        seqs = [int(m) for m in re.findall(rb"^hb 0 (\d+)$", data, re.M)]
        if seqs and seqs[-1] > after:
            return seqs[-1]
        if proc.poll() is not None:
            raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before a heartbeat in {console}; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"no heartbeat in {console} within {timeout} s")
        time.sleep(0.02)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


# ---------------------------------------------------------------------------------------------
# Panama VMM

def java_cmd(aot=AOT, train=None):
    cmd = [JAVA, "-XX:+UseSerialGC"]
    if train:
        cmd += [f"-XX:AOTCacheOutput={train}", "-Xlog:aot=off", "-Xlog:cds=off"]
    elif aot:
        cmd += [f"-XX:AOTCache={aot}", "-Xlog:aot=off", "-Xlog:cds=off"]
    else:
        cmd += ["-Xshare:auto"]
    return cmd + ["-jar", JAR]


def panama_chain(label, size, shared, n, warmup, aot=AOT, train=None, disk=None):
    """Boots one VM and migrates it n + warmup times, each time to a fresh `vmm incoming`.
    disk: None, "idle" (a virtio-blk disk the guest leaves alone) or "busy" (the guest's disk
    oracle keeps DISK_QD requests in flight, half of them writes)."""
    d = os.path.join(WORK, f"p-{label}")
    os.makedirs(d, exist_ok=True)
    memfile = os.path.join(WORK, f"p-{label}.ram")
    cmdline = CMDLINE
    if disk:
        diskfile = os.path.join(WORK, f"p-{label}.disk")
        with open(diskfile, "wb") as f:
            f.truncate(64 << 20)
        cmdline += " testguest.blk=" + ("off" if disk == "idle" else f"size=32M,qd={DISK_QD},write=50")
    run = ["run", "--memory", size, "--api-socket", f"{d}/api0", "--console", f"file:{d}/c0", "--cmdline", cmdline]
    if disk:
        run += ["--disk", diskfile]
    if shared:
        run += ["--mem-path", memfile, "--shared"]
    src = spawn(java_cmd(aot) + run, f"panama-{label}-0")
    rows, procs = [], [src]
    try:
        wait_hb(f"{d}/c0", src)
        api = JsonLines(f"{d}/api0", src, timeout=120)
        api.cmd("qmp_capabilities", check=False)
        for i in range(1, n + warmup + 1):
            is_train = train is not None and i == 1
            dst = spawn(java_cmd(aot, train if is_train else None)
                        + ["incoming", f"unix:{d}/mig{i}", "--api-socket", f"{d}/api{i}", "--console", f"file:{d}/c{i}",
                           "--timeout", "30"], f"panama-{label}-{i}")
            procs.append(dst)
            wait_path(f"{d}/mig{i}", dst)
            time.sleep(SETTLE)
            wait_hb(f"{d}/c{i-1}", procs[i - 1])
            stamps = HbStamps(f"{d}/c{i-1}", f"{d}/c{i}")
            stamps.start()
            deadline = time.monotonic() + 30
            while stamps.last[0] is None:  # migrate just after a heartbeat
                if time.monotonic() > deadline:
                    stamps.stop()
                    raise BenchError(f"no heartbeat from the source of migration {i} ({label})")
                time.sleep(0.0005)
            la = loadavg()
            t0 = time.monotonic()
            r = api.cmd("migrate", uri=f"unix:{d}/mig{i}")
            t1 = time.monotonic()
            api.close()
            try:
                wait_hb(f"{d}/c{i}", dst, timeout=30)
                deadline = time.monotonic() + 5
                while stamps.first_dst is None and time.monotonic() < deadline:
                    time.sleep(0.005)
            finally:
                stamps.stop()
            if stamps.corrupt:
                raise BenchError(f"CORRUPT after migration {i} of {label}: {stamps.corrupt}")
            # downtime-us: pause on the source -> resume on the destination; confirmed-ms: -> the source has the confirmation
            downtime = r["downtime-us"] / 1000 if "downtime-us" in r else r["downtime-ms"]
            row = {"i": i, "warmup": i <= warmup, "downtime_ms": round(downtime, 2), "confirmed_ms": r.get("confirmed-ms"),
                   "total_ms": r["total-ms"],
                   "bytes_sent": r["bytes-sent"], "api_ms": round((t1 - t0) * 1000, 1), "loadavg": la}
            if stamps.last[0] and stamps.first_dst:
                gap = (stamps.first_dst[0] - stamps.last[0][0]) * 1000
                row.update(hb_gap_ms=round(gap, 1), hb_seq=[stamps.last[0][1], stamps.first_dst[1]])
            log(f"panama {label} #{i}{' (warm-up)' if row['warmup'] else ''}: {row}")
            rows.append(row)
            try:
                procs[i - 1].wait(180)   # the source exits after a migration (an AOT dump takes a while)
            except subprocess.TimeoutExpired:
                raise BenchError(f"the source of migration {i} ({label}) did not exit")
            if procs[i - 1].returncode not in (0, None):
                log(f"note: source {procs[i-1].pid} exited with {procs[i-1].returncode}")
            api = JsonLines(f"{d}/api{i}", dst, timeout=120)
            api.cmd("qmp_capabilities", check=False)
        api.cmd("quit", check=False)
        api.close()
        procs[-1].wait(30)
    finally:
        for p in procs:
            stop(p)
        if os.path.exists(memfile):
            os.unlink(memfile)
        if disk and os.path.exists(diskfile):
            os.unlink(diskfile)
    return rows


def aot_train():
    """An AOT cache from a JVM that receives a VM and then sends it on (the path measured)."""
    out = AOT
    if not out or os.path.exists(out):
        return
    log(f"training the AOT cache {out}: run -> incoming (trained) -> incoming")
    tmp = out + ".tmp"
    os.environ["PANAMA_VMM_REHEARSAL"] = "sync"  # the VMM's rehearsal inside the training run
    try:
        panama_chain("aot-train", "256M", True, 2, 0, aot="", train=tmp)
    finally:
        os.environ["PANAMA_VMM_REHEARSAL"] = "background"
    deadline = time.monotonic() + 120
    while not os.path.exists(tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not os.path.exists(tmp):
        raise BenchError("the AOT training run wrote no cache")
    os.rename(tmp, out)


# ---------------------------------------------------------------------------------------------
# QEMU

def qemu_cmd(size, memfile, qmp, incoming):
    cmd = [QEMU, "-accel", "kvm", "-m", size,
           "-object", f"memory-backend-file,id=m,size={size},mem-path={memfile},share=on",
           "-machine", "pc,memory-backend=m", "-nographic", "-nodefaults", "-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", "defer"]
    return cmd


def qemu_chain(label, size, n, warmup):
    d = os.path.join(WORK, f"q-{label}")
    os.makedirs(d, exist_ok=True)
    memfile = os.path.join(WORK, f"q-{label}.ram")
    src = spawn(qemu_cmd(size, memfile, f"{d}/qmp0", False), f"qemu-{label}-0")
    procs, rows = [src], []
    try:
        q = JsonLines(f"{d}/qmp0", src, timeout=120)
        q.cmd("qmp_capabilities")
        q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
        time.sleep(SETTLE)
        for i in range(1, n + warmup + 1):
            dst = spawn(qemu_cmd(size, memfile, f"{d}/qmp{i}", True), f"qemu-{label}-{i}")
            procs.append(dst)
            qd = JsonLines(f"{d}/qmp{i}", dst, timeout=120)
            qd.cmd("qmp_capabilities")
            qd.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
            qd.cmd("migrate-incoming", uri=f"unix:{d}/mig{i}")
            wait_path(f"{d}/mig{i}", dst)
            time.sleep(SETTLE)
            la = loadavg()
            t0 = time.monotonic()
            q.cmd("migrate", uri=f"unix:{d}/mig{i}")
            while True:
                m = q.cmd("query-migrate")
                if m.get("status") in ("completed", "failed", "cancelled"):
                    break
                if time.monotonic() - t0 > 60:
                    raise BenchError(f"QEMU migration {i} of {label} did not complete in 60 s: {m}")
                time.sleep(0.002)
            t1 = time.monotonic()
            if m["status"] != "completed":
                raise BenchError(f"QEMU migration {i} of {label}: {m}")
            stop_ev = (q.wait_event("STOP", 5) or (None, None))[1]
            resume_ev = (qd.wait_event("RESUME", 10) or (None, None))[1]
            row = {"i": i, "warmup": i <= warmup, "downtime_ms": m.get("downtime"), "total_ms": m.get("total-time"),
                   "setup_ms": m.get("setup-time"), "bytes_sent": (m.get("ram") or {}).get("transferred"),
                   "poll_ms": round((t1 - t0) * 1000, 1), "loadavg": la}
            if stop_ev and resume_ev:
                row["stop_to_resume_ms"] = round((ev_time(resume_ev) - ev_time(stop_ev)) * 1000, 2)
            st = qd.cmd("query-status")
            if st.get("status") != "running":
                raise BenchError(f"QEMU destination {i} of {label} is {st}")
            log(f"qemu {label} #{i}{' (warm-up)' if row['warmup'] else ''}: {row}")
            rows.append(row)
            q.cmd("quit", check=False)
            q.close()
            procs[i - 1].wait(30)
            q = qd
        q.cmd("quit", check=False)
        q.close()
        procs[-1].wait(30)
    finally:
        for p in procs:
            stop(p)
        if os.path.exists(memfile):
            os.unlink(memfile)
    return rows


# ---------------------------------------------------------------------------------------------

def med(rows, key):
    xs = [r[key] for r in rows if not r["warmup"] and r.get(key) is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def summary(R):
    out = []
    p = out.append
    p(f"date {R['date']}; loadavg before {' '.join(R['load_before'])}, after {' '.join(R['load_after'])}; "
      f"{N} measured migrations per chain after {WARMUP} warm-up; guest hb={HB} ms; AOT cache: {'yes' if AOT else 'no'}")
    p("")
    p("medians in ms [min-max] of the measured migrations; QEMU ref = the lower of the two QEMU medians")
    p("| guest | QEMU#1 downtime | QEMU#2 downtime | QEMU STOP->RESUME | Panama downtime (pause -> resume) | Panama confirmed-ms"
      " | Panama hb gap - period | Panama / QEMU downtime | Panama / QEMU STOP->RESUME |")
    p("|---|---|---|---|---|---|---|---|---|")

    def rng(rows, key):
        xs = [r[key] for r in rows if not r["warmup"] and r.get(key) is not None]
        return f"{fmt(statistics.median(xs))} [{fmt(min(xs))}-{fmt(max(xs))}]" if xs else "-"

    verdict_rows = []
    for label in R["panama"]:
        pr = R["panama"][label]
        size = label.split("-")[0]
        q1 = R["qemu1"].get(size, [])
        q2 = R["qemu2"].get(size, [])
        qd = [x for x in (med(q1, "downtime_ms"), med(q2, "downtime_ms")) if x is not None]
        qs = [x for x in (med(q1, "stop_to_resume_ms"), med(q2, "stop_to_resume_ms")) if x is not None]
        pd = med(pr, "downtime_ms")
        gaps = [r["hb_gap_ms"] - HB for r in pr if not r["warmup"] and "hb_gap_ms" in r]
        r1 = f"{pd / min(qd):.0f}x" if (pd is not None and qd and min(qd) > 0) else "-"
        r2 = f"{pd / min(qs):.1f}x" if (pd is not None and qs and min(qs) > 0) else "-"
        qsr = [r["stop_to_resume_ms"] for r in q1 + q2 if not r["warmup"] and "stop_to_resume_ms" in r]
        p(f"| {label} | {rng(q1, 'downtime_ms')} | {rng(q2, 'downtime_ms')} | "
          f"{fmt(statistics.median(qsr)) + f' [{fmt(min(qsr))}-{fmt(max(qsr))}]' if qsr else '-'} | {rng(pr, 'downtime_ms')} | {rng(pr, 'confirmed_ms')} | "
          f"{fmt(statistics.median(gaps)) + f' [{fmt(min(gaps))}-{fmt(max(gaps))}]' if gaps else '-'} | {r1} | {r2} |")
        verdict_rows.append((label, pd))
        if len(qd) == 2 and max(qd) > 1.5 * min(qd) and max(qd) - min(qd) > 1:
            p(f"  warning: the two QEMU runs at {size} disagree ({qd[0]} vs {qd[1]} ms downtime): the machine drifted")
    p("")
    for label, pd in verdict_rows:
        p(f"verdict {label}: median downtime {fmt(pd)} ms -> {'meets' if pd is not None and pd < 10 else 'MISSES'} the < 10 ms target")
    sh = [(l, med(R["panama"][l], "downtime_ms")) for l in R["panama"] if l.endswith("shared")]
    sh = [(l, x) for l, x in sh if x is not None]
    if len(sh) >= 2:
        lo, hi = min(x for _, x in sh), max(x for _, x in sh)
        p(f"flatness (shared, {sh[0][0]} .. {sh[-1][0]}): medians {', '.join(fmt(x) for _, x in sh)} ms; "
          f"largest/smallest {hi / lo if lo else float('inf'):.2f}")
    return "\n".join(out)


def main():
    os.makedirs(LOGS, exist_ok=True)
    R = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": loadavg(), "sizes": SIZES, "n": N,
         "warmup": WARMUP, "hb": HB, "cmdline": CMDLINE, "aot": bool(AOT), "commit": E.get("MIGBENCH_COMMIT", "?"),
         "quick": E.get("MIGBENCH_IS_QUICK") == "1", "qemu1": {}, "panama": {}, "qemu2": {}}
    try:
        with open("/proc/uptime") as f:
            R["uptime_s"] = float(f.read().split()[0])
        aot_train()
        for s in SIZES:
            log(f"== QEMU (before) {s}")
            R["qemu1"][s] = qemu_chain(f"{s}-a", s, N, WARMUP)
        for s in SIZES:
            log(f"== Panama VMM {s}, shared file")
            R["panama"][f"{s}-shared"] = panama_chain(f"{s}-shared", s, True, N, WARMUP)
        log("== Panama VMM 256M, memfd")
        R["panama"]["256M-memfd"] = panama_chain("256M-memfd", "256M", False, N, WARMUP)
        # The same VM with a virtio-blk disk, idle and busy: what requests in flight add to the downtime.
        for state in ("idle", "busy"):
            log(f"== Panama VMM 256M, shared file, {state} disk")
            R["panama"][f"256M-disk-{state}"] = panama_chain(f"256M-disk-{state}", "256M", True, N, WARMUP, disk=state)
        for s in SIZES:
            log(f"== QEMU (after) {s}")
            R["qemu2"][s] = qemu_chain(f"{s}-b", s, N, WARMUP)
        R["load_after"] = loadavg()
    finally:
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(R, f, indent=1)
        end_all()
    text = summary(R)
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"migrate_bench: {e}", file=sys.stderr)
        sys.exit(1)
