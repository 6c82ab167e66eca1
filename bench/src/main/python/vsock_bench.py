#!/usr/bin/env python3
"""The vsock benchmark: a host program talking to the test guest through Panama VMM's virtio-vsock
(a Unix socket on the host, `CONNECT PORT`, the guest's echo driver), against the same program
talking to an echo process through a plain Unix socket (the limit: two host processes, no VM).
The driver of bench/run-vsock-bench, which builds the guest and cleans up; its header says what is
measured. This file only runs and summarises:

    vsock_bench.py CONFIG.json     (written by run-vsock-bench)

Both peers echo every byte, so both paths are measured the same way by the same client code:
round-trip latency (one 64-byte message out, wait until all 64 bytes are back; repeated) and
echo throughput (64 KiB writes while the echoed bytes are read back, for a fixed time; each byte
crosses the path both ways). The guest's echo driver polls its queues between 64 KiB memory checks
on one vCPU and gives the device 64 KiB of credit.
"""
import json
import os
import re
import select
import socket
import subprocess
import sys
import time

from benchlib import (BenchError, Console, fmt_num, loadavg, log, now, pct, run_driver, set_log, spawn, stop,
                      wait_for_quiet, write_summary)

CFG = json.load(open(sys.argv[1]))
OUT = CFG["out"]
RUNS = int(CFG["runs"])
SECONDS = float(CFG["seconds"])
PINGS = int(CFG["pings"])
MESSAGE = 64
CHUNK = 64 * 1024
GUEST_ARGS = "console=ttyS0 testguest.mem=4M testguest.hb=1000 testguest.vsock=echo:5000"


class Sleeper:
    def wait(self, s):
        time.sleep(s)


def connect_vsock(uds, port):
    """A host program's vsock connection: CONNECT PORT, then the device's OK line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(uds)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            raise BenchError(f"the VMM closed the connection to {uds} after {line!r}")
        line += b
    if not re.fullmatch(rb"OK \d+\n", line):
        raise BenchError(f"{uds} answered {line!r}, not OK HOSTPORT")
    return s


def latency(s, n):
    """n round trips of a MESSAGE-byte message; their times in microseconds."""
    msg = bytes(range(MESSAGE))
    times = []
    for _ in range(n):
        t0 = now()
        s.sendall(msg)
        got = 0
        while got < MESSAGE:
            b = s.recv(MESSAGE - got)
            if not b:
                raise BenchError("the peer closed the connection during the latency test")
            got += len(b)
        times.append((now() - t0) * 1e6)
    return times


def throughput(s, seconds):
    """Bytes echoed per second while writing CHUNK-byte blocks for `seconds` (then draining)."""
    s.setblocking(False)
    block = bytes(CHUNK)
    sent = received = 0
    view = memoryview(block)
    at = 0
    t0 = now()
    end = t0 + seconds
    try:
        while True:
            t = now()
            writing = t < end
            if not writing and received == sent:
                break
            if t > end + 30:
                raise BenchError(f"{sent - received} bytes not echoed 30 s after the end")
            r, w, _ = select.select([s], [s] if writing else [], [], 0.5)
            if w:
                try:
                    n = s.send(view[at:])
                    sent += n
                    at = (at + n) % CHUNK
                except BlockingIOError:
                    pass
            if r:
                try:
                    b = s.recv(1 << 20)
                    if not b:
                        raise BenchError("the peer closed the connection during the throughput test")
                    received += len(b)
                except BlockingIOError:
                    pass
        return received / (now() - t0)
    finally:
        s.setblocking(True)


ECHO_SERVER = r"""
import socket, sys
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(sys.argv[1]); l.listen(1)
print("listening", flush=True)
while True:
    c, _ = l.accept()
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        c.sendall(b)
    c.close()
"""


def measure(name, connect):
    s = connect()
    try:
        latency(s, min(50, PINGS))          # warm both ends
        rtt = latency(s, PINGS)
        rate = throughput(s, SECONDS)
    finally:
        s.close()
    row = {"path": name, "rtt_us_p50": pct(rtt, 50), "rtt_us_p99": pct(rtt, 99), "rtt_us_min": min(rtt),
           "echo_mb_s": rate / 1e6}
    log(f"{name}: {row}")
    print(f"  {name:6} rtt p50 {row['rtt_us_p50']:8.1f} us  p99 {row['rtt_us_p99']:8.1f} us  "
          f"echo {row['echo_mb_s']:8.1f} MB/s", flush=True)
    return row


def run_once(i):
    rows = []
    # The limit: two host processes on a plain Unix socket.
    path = os.path.join(OUT, f"echo-{i}.sock")
    p, _ = spawn([sys.executable, "-c", ECHO_SERVER, path], os.path.join(OUT, "logs", f"echo-{i}.log"))
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if p.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the echo process did not listen at {path}; see {p.logpath}")
            time.sleep(0.01)

        def plain():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s

        rows.append(measure("unix", plain))
    finally:
        stop(p)
    # Panama VMM: the guest's echo driver behind virtio-vsock.
    uds = os.path.join(OUT, f"vm-{i}.vsock")
    console_path = os.path.join(OUT, "logs", f"console-{i}.log")
    cmd = [CFG["vmm"], "run", "--memory", "256M", "--cpus", "1", "--kernel", CFG["elf"],
           "--vsock", f"cid=3,uds={uds}", "--console", f"file:{console_path}", "--cmdline", GUEST_ARGS]
    vm, _ = spawn(cmd, os.path.join(OUT, "logs", f"vmm-{i}.log"))
    console = Console(console_path)
    try:
        console.wait(r"vsock cid=3", Sleeper(), 60, vm)
        rows.append(measure("vsock", lambda: connect_vsock(uds, 5000)))
        bad = console.corrupt()
        if bad:
            raise BenchError(f"the guest reported {bad[0]}")
    finally:
        stop(vm)
        console.close()
    return rows


def summary(results):
    lines = [f"vsock benchmark: {results['runs']} run(s), {SECONDS:g} s of echo throughput and {PINGS} round trips"
             f" of {MESSAGE} bytes per path and run; medians over the runs",
             f"load: {results['quiet']}; 1-minute load average at the start {results['load_start'][0]:.2f},"
             f" at the end {results['load_end'][0]:.2f}", "",
             f"{'path':8} {'rtt p50 us':>11} {'rtt p99 us':>11} {'echo MB/s':>10}"]
    med = {}
    for path in ("unix", "vsock"):
        rows = [r for run in results["rows"] for r in run if r["path"] == path]
        m = {k: pct([r[k] for r in rows], 50) for k in ("rtt_us_p50", "rtt_us_p99", "echo_mb_s")}
        med[path] = m
        lines.append(f"{path:8} {fmt_num(m['rtt_us_p50']):>11} {fmt_num(m['rtt_us_p99']):>11} {fmt_num(m['echo_mb_s']):>10}")
    lines.append("")
    lines.append(f"vsock / unix: echo throughput {med['vsock']['echo_mb_s'] / med['unix']['echo_mb_s']:.3f}x,"
                 f" round trip p50 {med['vsock']['rtt_us_p50'] / med['unix']['rtt_us_p50']:.1f}x as long")
    lines.append("unix: a Python client and a Python echo process on one Unix socket. vsock: the same client,"
                 " CONNECT 5000 on the VM's socket, the test guest echoing (testguest.vsock=echo:5000).")
    return "\n".join(lines)


def main():
    set_log(os.path.join(OUT, "driver.log"))
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    quiet = wait_for_quiet(int(CFG["wait_quiet"]), float(CFG["quiet_load"]))
    results = {"runs": RUNS, "seconds": SECONDS, "pings": PINGS, "message": MESSAGE, "quiet": quiet,
               "load_start": loadavg(), "commit": CFG["commit"], "rows": []}
    try:
        for i in range(RUNS):
            print(f"== run {i + 1} of {RUNS}", flush=True)
            results["rows"].append(run_once(i))
        results["load_end"] = loadavg()
    finally:
        json.dump(results, open(os.path.join(OUT, "results.json"), "w"), indent=1)
    write_summary(OUT, results, summary)


if __name__ == "__main__":
    run_driver("vsock_bench", main)
