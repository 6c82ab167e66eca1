#!/usr/bin/env python3
"""The test guest's block benchmark (testguest.blkbench=) on QEMU 7.2's virtio-blk and on Panama VMM.
The driver of bench/run-blk-bench, which builds the guest, installs QEMU, prepares the disk files
and cleans up; its header says what is measured. This file only runs and summarises:

    blk_bench.py CONFIG.json     (written by run-blk-bench)

For every configuration (VMM, storage, cache mode) and run, one VMM process boots the guest with
one disk; the guest runs the six rows back to back and prints one line per row (its own IOPS and
MB/s, timed with the TSC). When each line arrives the driver reads the CPU time of the VMM process
(utime + stime of /proc/PID/stat, and of each thread in /proc/PID/task/*/stat), so a row's CPU
time is the difference from the previous line. The guest polls, so its vCPU thread is busy the
whole time; the CPU of the other threads (device emulation, I/O) is reported apart from it.
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
REGION = CFG["region"]
ROW = re.compile(r"blkbench (\S+) bs=(\d+) qd=(\d+) ios=(\d+) us=(\d+) iops=(\d+) mbps=(\d+\.\d)")
GUEST_ARGS = (f"console=ttyS0 testguest.mem=4M testguest.hb=1000 testguest.rng=off "
              f"testguest.blk=size={REGION} testguest.blkbench={ROW_MS}")


def qemu_cmd(disk, cache):
    aio = "native" if cache == "none" else "threads"
    return [CFG["qemu"], "-name", "blkbench,debug-threads=on", "-accel", "kvm", "-cpu", QEMU_CPU, "-smp", "1",
            "-M", "microvm,acpi=off,auto-kernel-cmdline=on", "-global", "virtio-mmio.force-legacy=false",
            "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
            "-display", "none", "-kernel", CFG["pvh_elf"], "-append", GUEST_ARGS,
            "-drive", f"if=none,id=d0,format=raw,file={disk},cache={cache},aio={aio}",
            "-device", "virtio-blk-device,drive=d0"]


def panama_cmd(disk, cache):
    return [CFG["vmm"], "run", "--memory", "256M", "--cpus", "1", "--kernel", CFG["elf"],
            "--disk", f"{disk},cache={cache}", "--cmdline", GUEST_ARGS]


def run_one(name, cmd, logpath):
    """Starts the VMM with its console on a pipe, collects the rows; returns a list of row dicts."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log(f"spawned {p.pid}: {' '.join(cmd)}")
    rows, buf, last = [], b"", None
    deadline = time.monotonic() + 60 + 6 * 3 * ROW_MS / 1000
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
                    if line == "ready":
                        last = cpu_times(p.pid)
                    elif line.startswith("CORRUPT"):
                        raise BenchError(f"{name}: the guest reported {line}")
                    elif line.startswith("blkbench unavailable"):
                        raise BenchError(f"{name}: {line}")
                    elif (m := ROW.fullmatch(line)) and last is not None:
                        t = cpu_times(p.pid)
                        ios = int(m[4])
                        rows.append({"row": f"{m[1]} {int(m[2]) // 1024}K qd{m[3]}", "ios": ios, "us": int(m[5]),
                                     "iops": int(m[6]), "mbps": float(m[7]),
                                     "cpu_s": t[0] - last[0], "other_cpu_s": (t[0] - last[0]) - (t[1] - last[1])})
                        last = t
                    elif line == "blkbench done":
                        return rows
        raise BenchError(f"{name}: no 'blkbench done' (VMM exit {p.poll()}); see {logpath}")
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    set_log(os.path.join(OUT, "driver.log"))
    results = {"config": CFG, "load_before": loadavg(), "quiet": wait_for_quiet(CFG["wait_quiet"], CFG["quiet_load"]),
               "configs": {}, "notes": []}
    configs = []
    for storage, disk in (("tmpfs", CFG["disk_tmpfs"]), ("disk", CFG["disk_disk"])):
        for cache in ("none", "writeback"):
            configs.append((f"qemu {storage} cache={cache}", qemu_cmd(disk, cache)))
            if CFG["panama_disk"]:
                configs.append((f"panama {storage} cache={cache}", panama_cmd(disk, cache)))
    if not CFG["panama_disk"]:
        results["notes"].append("Panama VMM rows skipped: this ./vmm has no --disk option yet (virtio-blk not merged)")
    for run in range(RUNS):
        for name, cmd in configs:
            print(f"== run {run + 1}/{RUNS}: {name}", flush=True)
            try:
                rows = run_one(name, cmd, os.path.join(OUT, "logs", name.replace(" ", "_").replace("=", "-") + ".log"))
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


def summary(results):
    lines = [f"test guest block benchmark: {ROW_MS} ms a row, region {REGION}, {RUNS} run(s); "
             f"load {results['load_before'][0]:.2f} -> {results['load_after'][0]:.2f} ({results['quiet']})",
             "median over runs; CPU us/IO = host CPU of the whole VMM process per request, "
             "other = without its vCPU thread (which polls all the time)", ""]
    lines.append(f"{'configuration':<28} {'row':<20} {'IOPS':>9} {'MB/s':>8} {'CPU us/IO':>10} {'other us/IO':>11}")
    for name, runs in results["configs"].items():
        ok = [r["rows"] for r in runs if "rows" in r]
        errors = [r["error"] for r in runs if "error" in r]
        for e in errors:
            lines.append(f"{name:<28} error: {e}")
        if not ok:
            continue
        for i, row in enumerate(ok[0]):
            same = [rs[i] for rs in ok if i < len(rs)]
            iops = statistics.median(r["iops"] for r in same)
            mbps = statistics.median(r["mbps"] for r in same)
            cpu = statistics.median(r["cpu_s"] / max(r["ios"], 1) * 1e6 for r in same)
            other = statistics.median(r["other_cpu_s"] / max(r["ios"], 1) * 1e6 for r in same)
            lines.append(f"{name:<28} {row['row']:<20} {iops:>9.0f} {fmt_num(mbps):>8} {fmt_num(cpu):>10} {fmt_num(other):>11}")
    lines += [""] + results["notes"]
    text = "\n".join(lines) + "\n"
    open(os.path.join(OUT, "summary.txt"), "w").write(text)
    print(text, end="")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"blk_bench: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_all()
