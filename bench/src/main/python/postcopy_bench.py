"""Post-copy of the test guest between two VMM processes over 127.0.0.1, for bench/run-postcopy-bench.
QEMU 7.2: testguest-pvh.elf on a microvm machine (where it runs on one vCPU), a source and an
`-incoming defer` destination, postcopy-ram on both, `migrate` then at once `migrate-start-postcopy`.
Panama VMM, as an operator runs it: `vmm run` (the embedded test guest, one vCPU) and `vmm incoming
tcp:127.0.0.1:PORT` (which warms up before it listens), postcopy-ram on the source, `migrate` then
at once `migrate-start-postcopy`. Both ends are left alone for SETTLE s (POSTCOPYBENCH_SETTLE, 2)
once ready, then timed alike: the destination's RESUME event to its first heartbeat and to the end
(QEMU: query-migrate "completed" polled every 2 ms on the source; Panama: the source's migration job
concluding, an event), the guest's pause from the source's STOP to the destination's RESUME by the
timestamps each VMM puts on its events. Prints one JSON line per run, in PostcopyBench's shape.

    python3 postcopy_bench.py QEMU ELF MEMORY REWRITE HB SCRATCH_DIR LOG
    python3 postcopy_bench.py panama VMM MEMORY REWRITE HB SCRATCH_DIR LOG
"""
import json
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

HB = re.compile(r"hb \d+ \d+")


def size_bytes(s):
    return int(s[:-1]) << (20 if s[-1] == "M" else 30)


def qemu_cmd(qemu, elf, memory, rewrite, hb, qmp, console, incoming):
    guest_mem = size_bytes(memory) // 4 * 3 >> 20
    cmd = [qemu, "-name", "postcopy,debug-threads=on", "-accel", "kvm", "-cpu", B.QEMU_CPU, "-smp", "1",
           "-M", "microvm,acpi=off,auto-kernel-cmdline=on", "-m", memory, "-nodefaults", "-no-user-config",
           "-nographic", "-no-reboot", "-serial", f"file:{console}", "-display", "none", "-kernel", elf,
           "-append", f"console=ttyS0 testguest.mem={guest_mem}M testguest.hb={hb} testguest.rewrite={rewrite}",
           "-qmp", f"unix:{qmp},server=on,wait=off"]
    return cmd + (["-incoming", "defer"] if incoming else [])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SETTLE = float(os.environ.get("POSTCOPYBENCH_SETTLE", "2"))


def stamp(event):
    """The time a VMM put on its event (read with wait_event), in seconds."""
    ts = event[1]["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


def start_postcopy(src, dst, port):
    """migrate, then at once migrate-start-postcopy (before any pass); the destination's RESUME event."""
    src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    src.cmd("migrate-start-postcopy")
    resumed = dst.wait_event("RESUME", 120)
    if resumed is None:
        raise B.BenchError("the destination never resumed")
    return resumed


def rates(dc, watch, t_resume, t_done):
    """Heartbeats per second while pages arrived and over as long after (at least 2 s)."""
    window = max(t_done - t_resume, 2.0)
    end = t_done + window
    while B.now() < end:
        dc.poll()
        watch.wait(0.005)
    dc.poll()
    beats = [t for t, l in dc.lines if HB.fullmatch(l)]
    during = sum(1 for t in beats if t_resume <= t < t_done) / (t_done - t_resume)
    after = sum(1 for t in beats if t_done <= t < end) / window
    return during, after


def panama(vmm, memory, rewrite, hb, scratch, logpath):
    paths = {k: os.path.join(scratch, k) for k in ("src.sock", "dst.sock", "src.log", "dst.log", "dst.err")}
    for p in paths.values():
        if os.path.exists(p):
            os.unlink(p)
    guest_mem = size_bytes(memory) // 4 * 3 >> 20
    port = free_port()
    src_p, _ = B.spawn([vmm, "run", "--memory", memory, "--cpus", "1", "--cmdline",
                        f"console=ttyS0 testguest.mem={guest_mem}M testguest.hb={hb} testguest.rewrite={rewrite}",
                        "--api-socket", paths["src.sock"], "--console", f"file:{paths['src.log']}"], logpath)
    dst_p, _ = B.spawn([vmm, "incoming", f"tcp:127.0.0.1:{port}", "--api-socket", paths["dst.sock"],
                        "--console", f"file:{paths['dst.log']}"], paths["dst.err"])
    try:
        watch = B.DirWatch(scratch)
        sc, dc = B.Console(paths["src.log"]), B.Console(paths["dst.log"])
        sc.wait(r"hb 0 3", watch, 300, src_p)
        deadline = time.monotonic() + 120
        while b"waiting for a migration on" not in open(paths["dst.err"], "rb").read():
            if dst_p.poll() is not None or time.monotonic() > deadline:
                raise B.BenchError(f"vmm incoming never listened: see {paths['dst.err']}")
            time.sleep(0.01)
        src = B.JsonLines(paths["src.sock"], src_p)
        dst = B.JsonLines(paths["dst.sock"], dst_p)
        time.sleep(SETTLE)
        src.cmd("migrate-set-capabilities", capabilities=[{"capability": "postcopy-ram", "state": True}])
        resumed = start_postcopy(src, dst, port)
        t_resume = resumed[0]
        concluded = lambda e: e.get("event") == "JOB_STATUS_CHANGE" and e["data"].get("status") == "concluded"
        # The console's lines are stamped when read: it is read between short waits for the end.
        deadline = time.monotonic() + 120
        while True:
            dc.poll()
            done = src.wait_event(concluded, 0.002)
            if done is not None:
                break
            if time.monotonic() > deadline:
                raise B.BenchError("the migration did not conclude in 120 s")
        t_done = done[0]
        if "error" in done[1]["data"]:
            raise B.BenchError(f"the migration failed: {done[1]['data']['error']}")
        result = done[1]["data"]["result"]
        stopped = src.wait_event("STOP", 10)
        t_first, _ = dc.wait(r"hb 0 \d+", watch, 60, dst_p)
        # The destination's own count of what arrived, once its stream has ended.
        deadline = time.monotonic() + 30
        while True:
            m = dst.cmd("query-migrate", check=False) or {}
            if m.get("status") == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if m.get("status") != "completed":
            raise B.BenchError(f"the destination did not complete: {m}")
        pc = m["postcopy"]
        during, after = rates(dc, watch, t_resume, t_done)
        print(json.dumps({
            "vmm": "panama", "memory": size_bytes(memory), "rewrite": int(rewrite), "cpus": 1,
            "pages": result["postcopy-pages"],
            "resume_to_first_output_ms": round((t_first - t_resume) * 1000, 1),
            "resume_to_last_page_ms": round((t_done - t_resume) * 1000, 1),
            "hb_per_s_during": round(during, 1), "hb_per_s_after": round(after, 1),
            "bytes_sent": pc["bytes"], "pages_requested": pc["pages-requested"],
            "pages_streamed": pc["pages-streamed"], "zero_pages": pc["zero-pages"],
            "duplicates": pc["duplicates"],
            "pages_arrived": pc["pages-requested"] + pc["pages-streamed"] + pc["zero-pages"],
            "blocked_ms": round(pc["fault-wait-us"] / 1000, 1),
            "downtime_ms": result["downtime-ms"],
            "paused_ms": round((stamp(resumed) - stamp(stopped)) * 1000, 1) if stopped else None,
            "corrupt": bool(dc.corrupt() or sc.corrupt()), "running": dst_p.poll() is None}), flush=True)
        dst.cmd("quit", check=False)
    finally:
        B.end_all()


def main():
    if sys.argv[1] == "panama":
        vmm, memory, rewrite, hb, scratch, logpath = sys.argv[2:8]
        B.set_log(logpath)
        return panama(vmm, memory, rewrite, hb, scratch, logpath)
    qemu, elf, memory, rewrite, hb, scratch, logpath = sys.argv[1:8]
    B.set_log(logpath)
    paths = {k: os.path.join(scratch, k) for k in ("src.sock", "dst.sock", "src.log", "dst.log")}
    for p in paths.values():
        if os.path.exists(p):
            os.unlink(p)
    src_p, _ = B.spawn(qemu_cmd(qemu, elf, memory, rewrite, hb, paths["src.sock"], paths["src.log"], False), logpath)
    dst_p, _ = B.spawn(qemu_cmd(qemu, elf, memory, rewrite, hb, paths["dst.sock"], paths["dst.log"], True), logpath)
    try:
        src = B.JsonLines(paths["src.sock"], src_p)
        dst = B.JsonLines(paths["dst.sock"], dst_p)
        watch = B.DirWatch(scratch)
        sc, dc = B.Console(paths["src.log"]), B.Console(paths["dst.log"])
        sc.wait(r"hb 0 3", watch, 300, src_p)
        time.sleep(SETTLE)
        for q in (src, dst):
            q.cmd("migrate-set-capabilities", capabilities=[{"capability": "postcopy-ram", "state": True}])
        # No bandwidth limit (QEMU's default is 32 MiB/s); Panama's side has none either.
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 100 << 30})
        port = free_port()
        dst.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        resumed = start_postcopy(src, dst, port)
        t_resume = resumed[0]
        while True:
            dc.poll()
            m = src.cmd("query-migrate")
            if m.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.002)
        t_done = B.now()
        if m["status"] != "completed":
            raise B.BenchError(f"migration {m['status']}: {m}")
        t_first, _ = dc.wait(r"hb 0 \d+", watch, 60, dst_p)
        # The guest's pause, as Panama's rows measure it: the source's STOP to the destination's
        # RESUME, by the timestamps QEMU puts on its events.
        stopped = src.wait_event("STOP", 10)
        paused = round((stamp(resumed) - stamp(stopped)) * 1000, 1) if stopped else None
        during, after = rates(dc, watch, t_resume, t_done)
        ram = m.get("ram", {})
        print(json.dumps({
            "vmm": "qemu", "memory": size_bytes(memory), "rewrite": int(rewrite), "cpus": 1,
            "pages": ram.get("total", 0) // 4096,
            "resume_to_first_output_ms": round((t_first - t_resume) * 1000, 1),
            "resume_to_last_page_ms": round((t_done - t_resume) * 1000, 1),
            "hb_per_s_during": round(during, 1), "hb_per_s_after": round(after, 1),
            "bytes_sent": ram.get("transferred", 0),
            "pages_requested": ram.get("postcopy-requests", 0), "pages_streamed": ram.get("normal", 0),
            "zero_pages": ram.get("duplicate", 0), "duplicates": 0,
            "pages_arrived": ram.get("total", 0) // 4096, "total_time_ms": m.get("total-time"),
            "downtime_ms": m.get("downtime"), "paused_ms": paused, "corrupt": bool(dc.corrupt()), "running": dst_p.poll() is None}),
            flush=True)
        for q in (src, dst):
            q.cmd("quit", check=False)
    finally:
        B.end_all()


if __name__ == "__main__":
    B.run_driver("postcopy_bench", main)
