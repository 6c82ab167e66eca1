#!/usr/bin/env python3
"""The test guest's network benchmark (testguest.netbench=) on QEMU 7.2's userspace virtio-net and on
Panama VMM. The driver of bench/run-net-bench, which builds the guest, installs QEMU, makes the
network namespace and its tap and cleans up; its header says what is measured. This file only runs
and summarises:

    net_bench.py CONFIG.json     (written by run-net-bench)

For every VMM and run: a fresh guest/net-peer.py on the tap, then one VMM process on the tap, both
in the namespace. The guest runs the four rows back to back and prints one line per row (frames
and the time by its TSC). Guest-to-host rows count what the peer received (its per-size counters,
asked for after the rows), host-to-guest rows what the guest received. When the guest prints
"ready" and each row, the driver reads the VMM process's CPU time (benchlib.cpu_times): a row's
CPU per frame is the VMM's threads other than the vCPU's (the guest polls, so its vCPU thread is
busy the whole row), and the vCPU thread's system time per frame: its exits, such as the queue
notifications a device did not suppress.
"""
import json
import os
import re
import select
import statistics
import subprocess
import sys
import time

from benchlib import QEMU_CPU, BenchError, cpu_times, end_all, fmt_num, loadavg, log, set_log, wait_for_quiet

CFG = json.load(open(sys.argv[1]))
OUT = CFG["out"]
RUNS = int(CFG["runs"])
ROW_MS = int(CFG["row_ms"])
NS = ["ip", "netns", "exec", CFG["netns"]]
ROW = re.compile(r"netbench (tx|rx) size=(\d+) frames=(\d+) us=(\d+) fps=(\d+) mbps=(\d+\.\d) peer=(\d+)")
GUEST_ARGS = f"console=ttyS0 testguest.mem=4M testguest.hb=1000 testguest.rng=off testguest.netbench={ROW_MS}"
MAC = "02:00:00:00:00:0b"


def qemu_cmd():
    return NS + [CFG["qemu"], "-name", "netbench,debug-threads=on", "-accel", "kvm", "-cpu", QEMU_CPU, "-smp", "1",
                 "-M", "microvm,acpi=off,auto-kernel-cmdline=on", "-global", "virtio-mmio.force-legacy=false",
                 "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
                 "-display", "none", "-kernel", CFG["pvh_elf"], "-append", GUEST_ARGS,
                 "-netdev", f"tap,id=n0,ifname={CFG['tap']},script=no,downscript=no,vhost=off",
                 "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]


def panama_cmd():
    return NS + [CFG["vmm"], "run", "--memory", "256M", "--cpus", "1", "--kernel", CFG["elf"],
                 "--net", f"tap={CFG['tap']},mac={MAC}", "--cmdline", GUEST_ARGS]


class Peer:
    def __init__(self, logpath):
        self.log = open(logpath, "ab")
        self.p = subprocess.Popen(NS + ["python3", CFG["peer"], CFG["tap"]], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        line = self.readline(30)
        if not line.startswith("peer ready"):
            raise BenchError(f"the peer did not start: {line!r}")

    def readline(self, timeout):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            raise BenchError("the peer did not answer")
        line = self.p.stdout.readline().decode(errors="replace")
        self.log.write(line.encode())
        return line.strip()

    def stats(self):
        self.p.stdin.write(b"stats\n")
        self.p.stdin.flush()
        while True:
            line = self.readline(30)
            if line.startswith("stats "):
                return {k: int(v) for k, v in (w.split("=") for w in line.split()[1:])}

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()


def run_one(name, cmd, logpath):
    """One VMM with a fresh peer; returns the rows."""
    peer = Peer(logpath + ".peer")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log(f"spawned {p.pid}: {' '.join(cmd)}")
    rows, buf, last = [], b"", None
    deadline = time.monotonic() + 90 + 4 * 4 * ROW_MS / 1000
    try:
        with open(logpath, "ab") as console:
            console.write(("$ " + " ".join(cmd) + "\n").encode())
            while time.monotonic() < deadline:
                r, _, _ = select.select([p.stdout], [], [], 1)
                if not r:
                    if p.poll() is not None:
                        break
                    continue
                data = os.read(p.stdout.fileno(), 65536)
                if not data:
                    break
                console.write(data)
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.decode(errors="replace").strip()
                    if line.startswith("CORRUPT") or line.startswith("netbench unavailable"):
                        raise BenchError(f"{name}: the guest printed {line}")
                    elif line == "ready":
                        last = cpu_times(p.pid)
                    elif (m := ROW.fullmatch(line)) and last is not None:
                        t = cpu_times(p.pid)
                        rows.append({"dir": m[1], "size": int(m[2]), "frames": int(m[3]), "us": int(m[4]),
                                     "peer": int(m[7]), "other_cpu_s": (t[0] - last[0]) - (t[1] - last[1]),
                                     "vcpu_sys_s": t[2] - last[2]})
                        last = t
                    elif line == "netbench done":
                        stats = peer.stats()
                        for row in rows:
                            if row["dir"] == "tx":
                                # What arrived, over the time the guest sent (the guest's count is what it queued).
                                row["queued"] = row["frames"]
                                row["frames"] = stats.get(f"bench_rx_{row['size']}", 0)
                            row["fps"] = row["frames"] / max(row["us"], 1) * 1e6
                            row["mbps"] = row["frames"] * row["size"] / max(row["us"], 1)
                        return rows
        raise BenchError(f"{name}: no 'netbench done' (VMM exit {p.poll()}); see {logpath}")
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        peer.close()


def main():
    set_log(os.path.join(OUT, "driver.log"))
    results = {"config": CFG, "load_before": loadavg(), "quiet": wait_for_quiet(CFG["wait_quiet"], CFG["quiet_load"]),
               "configs": {}}
    configs = [("qemu", qemu_cmd()), ("panama", panama_cmd())]
    for run in range(RUNS):
        for name, cmd in configs:
            print(f"== run {run + 1}/{RUNS}: {name}", flush=True)
            try:
                rows = run_one(name, cmd, os.path.join(OUT, "logs", f"{name}-{run + 1}.log"))
            except BenchError as e:
                print(f"   {e}", flush=True)
                results["configs"].setdefault(name, []).append({"error": str(e)})
                continue
            results["configs"].setdefault(name, []).append({"rows": rows})
    results["load_after"] = loadavg()
    json.dump(results, open(os.path.join(OUT, "results.json"), "w"), indent=1)
    summary(results)
    failed = [n for n, runs in results["configs"].items() if any("error" in r for r in runs)]
    if failed:
        raise BenchError(f"failed: {', '.join(failed)}")


def medians(runs):
    """{(dir, size): (fps, mbps, VMM CPU us/frame without the vCPU, vCPU system us/frame)} medians
    over the runs that finished."""
    ok = [r["rows"] for r in runs if "rows" in r]
    out = {}
    for rows in ok:
        for row in rows:
            out.setdefault((row["dir"], row["size"]), []).append(row)

    def per_frame(v, key):
        return statistics.median(r[key] / max(r["frames"], 1) * 1e6 for r in v)

    return {k: (statistics.median(r["fps"] for r in v), statistics.median(r["mbps"] for r in v),
                per_frame(v, "other_cpu_s"), per_frame(v, "vcpu_sys_s")) for k, v in out.items()}


def summary(results):
    lines = [f"test guest network benchmark: {ROW_MS} ms a row, {RUNS} run(s); "
             f"load {results['load_before'][0]:.2f} -> {results['load_after'][0]:.2f} ({results['quiet']})",
             "median over runs; tx = guest to host (frames the peer received), rx = host to guest (frames the guest received)",
             ""]
    q = medians(results["configs"].get("qemu", []))
    pm = medians(results["configs"].get("panama", []))
    lines.append(f"{'row':<12} {'QEMU frames/s':>14} {'MB/s':>8} {'Panama frames/s':>16} {'MB/s':>8} {'Panama/QEMU':>12}"
                 f" {'CPU us/frame, QEMU':>19} {'Panama':>7} {'vCPU sys us/frame, QEMU':>24} {'Panama':>7}")
    none = (None, None, None, None)
    for key in sorted(set(q) | set(pm), key=lambda k: (k[0] != "tx", k[1])):
        qf, qm, qc, qv = q.get(key, none)
        pf, pmb, pc, pv = pm.get(key, none)
        ratio = pf / qf if qf and pf is not None else None
        lines.append(f"{key[0] + ' ' + str(key[1]):<12} {fmt_num(qf):>14} {fmt_num(qm):>8} {fmt_num(pf):>16} "
                     f"{fmt_num(pmb):>8} {('-' if ratio is None else f'{ratio:.2f}x'):>12}"
                     f" {fmt_num(qc):>19} {fmt_num(pc):>7} {fmt_num(qv):>24} {fmt_num(pv):>7}")
    lines.append("CPU us/frame: the VMM's threads but its vCPU's; vCPU sys: the vCPU thread's system time (its exits)")
    for name, runs in results["configs"].items():
        for r in runs:
            if "error" in r:
                lines.append(f"{name}: error: {r['error']}")
    text = "\n".join(lines) + "\n"
    open(os.path.join(OUT, "summary.txt"), "w").write(text)
    print(text, end="")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"net_bench: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_all()
