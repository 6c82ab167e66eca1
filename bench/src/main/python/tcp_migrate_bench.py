#!/usr/bin/env python3
"""Live migration over TCP (pre-copy): Panama VMM vs QEMU 7.2 over loopback, same guest, same
max-bandwidth and downtime-limit. Driven by bench/run-tcp-migrate-bench (what runs: its header;
how to read it: docs/benchmarks.md)."""
import json
import os
import re
import socket
import statistics
import sys
import time

from benchlib import QEMU_CPU, BenchError, JsonLines, log, run_driver, set_log, spawn, stop, write_summary

CFG = json.load(open(sys.argv[1]))
OUT, WORK = CFG["out"], CFG["work"]
LOGS = os.path.join(OUT, "logs")
RESULTS = {"config": CFG, "rows": []}


def mib(size):
    return int(size[:-1]) * (1024 if size.endswith("G") else 1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(path, regex, timeout, proc, start=0):
    """Waits for a console line matching regex after byte offset start; returns the offset after it."""
    r = re.compile(regex.encode(), re.M)
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = open(path, "rb").read()
        except FileNotFoundError:
            data = b""
        m = r.search(data, start)
        if m:
            return m.end()
        if proc.poll() is not None:
            raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before {path} showed /{regex}/; see {proc.logpath}")
        if time.monotonic() > deadline:
            raise BenchError(f"no /{regex}/ in {path} within {timeout} s")
        time.sleep(0.02)


def cmdline(size, rewrite):
    return f"console=ttyS0 testguest.hb=100 testguest.mem={mib(size) - 64}M testguest.rewrite={rewrite}"


def qemu(size, rewrite, name, incoming, ram_file):
    qmp = os.path.join(WORK, name + ".qmp")
    console = os.path.join(WORK, name + ".console")
    machine = "microvm,acpi=off"
    backend = []
    if ram_file:
        machine += ",memory-backend=ram"
        backend = ["-object", f"memory-backend-file,id=ram,size={size},mem-path={ram_file},share=on"]
    cmd = [CFG["qemu"], "-accel", "kvm", "-cpu", QEMU_CPU, "-M", machine, *backend, "-m", size, "-smp", "1",
           "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", f"file:{console}",
           "-kernel", CFG["pvh_elf"], "-append", cmdline(size, rewrite), "-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", "defer"]
    p, _ = spawn(cmd, os.path.join(LOGS, name + ".log"))
    return p, qmp, console


def panama(size, rewrite, name, port, ram_file):
    api = os.path.join(WORK, name + ".sock")
    console = os.path.join(WORK, name + ".console")
    if port is None:
        cmd = [CFG["vmm"], "run", "--memory", size, "--cpus", "1", "--kernel", CFG["elf"],
               "--cmdline", cmdline(size, rewrite)]
        if ram_file:
            cmd += ["--mem-path", ram_file, "--shared"]  # the destination maps it itself
    else:
        cmd = [CFG["vmm"], "incoming", f"tcp:127.0.0.1:{port}"]
    cmd += ["--api-socket", api, "--console", f"file:{console}"]
    p, _ = spawn(cmd, os.path.join(LOGS, name + ".log"))
    return p, api, console


def follow(q, give_up):
    """query-migrate every 20 ms until it ends; None if it has not after give_up s (then cancelled)."""
    deadline = time.monotonic() + give_up
    while True:
        m = q.cmd("query-migrate")
        st = m.get("status")
        if st == "completed":
            return m
        if st in ("failed", "cancelled"):
            raise BenchError(f"the migration {st}: {m}")
        if time.monotonic() > deadline:
            q.cmd("migrate_cancel")
            return None
        time.sleep(0.02)


def panama_result(q, give_up):
    """The job's concluding event (the source VMM exits right after it, so no query-migrate then),
    in query-migrate's shape; None if it has not concluded after give_up s (then cancelled)."""
    concluded = lambda e: e.get("event") == "JOB_STATUS_CHANGE" and e["data"].get("status") == "concluded"
    got = q.wait_event(concluded, give_up)
    if got is None:
        q.cmd("migrate-cancel")
        if q.wait_event(concluded, 60) is None:
            raise BenchError("the cancelled migration did not conclude")
        return None
    data = got[1]["data"]
    if "error" in data:
        raise BenchError(f"the migration failed: {data['error']}")
    r = data["result"]
    return {"total-time": r["total-ms"], "downtime": r["downtime-ms"], "cpu-throttle-percentage": r["cpu-throttle-percentage"],
            "ram": {"transferred": r["bytes-sent"], "dirty-sync-count": r["passes"]}}


def one(peer, size, rewrite, run, memory):
    tag = f"{peer}-{size}-r{rewrite}-{memory}-{run}"
    port = free_port()
    ram_file = f"/dev/shm/tcpbench-{os.getpid()}-{tag}.ram" if memory == "shared" else None
    if peer == "qemu":
        src, src_api, src_console = qemu(size, rewrite, tag + "-src", False, ram_file)
        dst, dst_api, dst_console = qemu(size, rewrite, tag + "-dst", True, ram_file)
    else:
        src, src_api, src_console = panama(size, rewrite, tag + "-src", None, ram_file)
        dst, dst_api, dst_console = panama(size, rewrite, tag + "-dst", port, ram_file)
    try:
        wait_line(src_console, r"^hb 0 1$", 120, src)
        s = JsonLines(src_api, src)
        d = JsonLines(dst_api, dst)
        if peer == "qemu":
            if ram_file:  # both ends: the RAM block backed by a shared file is not sent
                for end in (s, d):
                    end.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
            d.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        else:
            wait_line(os.path.join(LOGS, tag + "-dst.log"), r"waiting for a migration on", 60, dst)
        # An operator migrates a guest that has been running: both ends get the same settle time
        # after they are ready (a JVM's first seconds are its JIT's; QEMU's start has no such tail).
        time.sleep(CFG.get("settle", 0))
        s.cmd("migrate-set-parameters", **{"max-bandwidth": CFG["bandwidth"], "downtime-limit": CFG["downtime"]})
        s.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        if peer == "qemu":
            m = follow(s, CFG["give_up"])
        else:
            m = panama_result(s, CFG["give_up"])
        row = {"peer": peer, "size": size, "rewrite": rewrite, "memory": memory, "run": run, "converged": m is not None}
        if m is not None:
            row.update({"total_ms": m.get("total-time"), "downtime_ms": m.get("downtime"),
                        "bytes": m["ram"]["transferred"], "passes": m["ram"].get("dirty-sync-count"),
                        "throttle": m.get("cpu-throttle-percentage", 0)})
            # The guest's own pause, measured alike on both: from the source's STOP event to the
            # destination's RESUME, by the timestamps each VMM puts on them (one clock, one machine).
            # Each VMM's own "downtime" ends elsewhere (QEMU's when the source has sent the state).
            stopped, resumed = event_seconds(s, "STOP", 1), event_seconds(d, "RESUME", 10)
            if stopped is not None and resumed is not None:
                row["paused_ms"] = round((resumed - stopped) * 1000, 1)
            if peer == "qemu":
                d.cmd("cont", check=False)  # QEMU's destination resumes by itself (autostart); harmless
            at = os.path.getsize(dst_console) if os.path.exists(dst_console) else 0
            wait_line(dst_console, r"^hb 0 \d+$", 60, dst, max(0, at - 1))
            wait_line(dst_console, r"^hb 0 \d+$", 60, dst, wait_line(dst_console, r"^hb 0 \d+$", 60, dst, max(0, at - 1)))
            for c in (src_console, dst_console):
                if os.path.exists(c) and b"CORRUPT" in open(c, "rb").read():
                    raise BenchError(f"{c} reports CORRUPT")
        log(f"{tag}: {row}")
        print(f"{tag}: {row}", flush=True)
        RESULTS["rows"].append(row)
        s.close()
        d.close()
    finally:
        stop(src)
        stop(dst)
        if ram_file and os.path.exists(ram_file):
            os.remove(ram_file)
        for f in os.listdir(WORK):
            if f.startswith(tag):
                try:
                    os.remove(os.path.join(WORK, f))
                except OSError:
                    pass


def event_seconds(end, name, timeout):
    """The timestamp the VMM put on its event `name` (already read, or coming within timeout s), or None."""
    got = end.wait_event(name, timeout)
    if got is None:
        return None
    ts = got[1].get("timestamp") or {}
    return ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6


def mib_text(b):
    """MiB, with decimals when under 10 (a migration by reference sends KiB)."""
    return f"{b / 2**20:.0f}" if b >= 10 * 2**20 else f"{b / 2**20:.2f}"


def med(rows, key):
    xs = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def summary(results):
    lines = [f"TCP pre-copy over loopback, max-bandwidth {CFG['bandwidth']} B/s, downtime-limit {CFG['downtime']} ms,"
             f" median of {CFG['runs']} run(s); load {open('/proc/loadavg').read().split()[0:3]}",
             f"{'memory':>6} {'size':>5} {'rewrite':>7} | {'QEMU total':>10} {'downtime':>8} {'MiB sent':>8} | "
             f"{'Panama total':>12} {'downtime':>8} {'MiB sent':>8} {'throttle':>8} | {'total':>6} {'down':>6} {'bytes':>6}"
             f" | {'paused QEMU':>11} {'Panama':>7} {'ratio':>6}"]
    for memory, size, rw in ((m, s, r) for m in CFG.get("memory", ["anon"]) for s in CFG["sizes"] for r in CFG["rewrites"]):
            pick = lambda peer: [r for r in results["rows"] if r["peer"] == peer and r["size"] == size
                                 and r["rewrite"] == rw and r.get("memory", "anon") == memory]
            q, p = pick("qemu"), pick("panama")
            if not q or not p:
                continue

            def cols(rows):
                if not all(r["converged"] for r in rows):
                    return [f"> {CFG['give_up']} s", "-", "-"]
                return [f"{med(rows, 'total_ms'):.0f} ms", f"{med(rows, 'downtime_ms'):.0f}", mib_text(med(rows, 'bytes'))]

            qc, pc = cols(q), cols(p)
            ratio = ["-", "-", "-"]
            if all(r["converged"] for r in q + p):
                ratio = [f"{med(p, k) / max(1, med(q, k)):.2f}" for k in ("total_ms", "downtime_ms", "bytes")]
            qp, pp = med(q, "paused_ms"), med(p, "paused_ms")
            paused = [f"{qp:.1f}" if qp is not None else "-", f"{pp:.1f}" if pp is not None else "-",
                      f"{pp / max(0.1, qp):.2f}" if qp is not None and pp is not None else "-"]
            lines.append(f"{memory:>6} {size:>5} {rw:>6}% | {qc[0]:>10} {qc[1]:>8} {qc[2]:>8} | {pc[0]:>12} {pc[1]:>8} {pc[2]:>8} "
                         f"{str(med(p, 'throttle') or 0) + '%':>8} | {ratio[0]:>6} {ratio[1]:>6} {ratio[2]:>6}"
                         f" | {paused[0]:>11} {paused[1]:>7} {paused[2]:>6}")
    lines.append("ratios: Panama / QEMU (below 1: Panama is better); paused: ms from the source's STOP event to the"
                 " destination's RESUME (each VMM's own timestamps), the guest's pause measured alike on both")
    return "\n".join(lines)


def main():
    set_log(os.path.join(OUT, "driver.log"))
    try:
        for memory in CFG.get("memory", ["anon"]):
            for size in CFG["sizes"]:
                for rw in CFG["rewrites"]:
                    for run in range(CFG["runs"]):
                        for peer in ("qemu", "panama"):
                            one(peer, size, rw, run, memory)
    finally:
        json.dump(RESULTS, open(os.path.join(OUT, "results.json"), "w"), indent=1)
    write_summary(OUT, RESULTS, summary)


if __name__ == "__main__":
    run_driver("run-tcp-migrate-bench", main)
