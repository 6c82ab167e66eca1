#!/usr/bin/env python3
"""Restore of a full snapshot with each --memory-load (mapped, eager, lazy, lazy with the learned
working set) beside QEMU 7.2 restoring a full migration stream of a guest of the same size. The
driver of bench/run-lazy-restore-bench, whose header says what is measured:

    lazy_restore_bench.py CONFIG.json     (written by run-lazy-restore-bench)

Every process it starts goes through benchlib.spawn and is ended when the driver stops.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import run_driver, write_summary, BenchError, Console, DirWatch, JsonLines, end_all, loadavg, log, set_log, spawn, stop  # noqa: E402

CFG = json.load(open(sys.argv[1]))
OUT, WORK, JAVA, JAR, QEMU, BIOS = CFG["out"], CFG["work"], CFG["java"], CFG["jar"], CFG["qemu"], CFG["bios"]
SIZES = CFG["sizes"].split()
RUNS = int(CFG["runs"])
HB = int(CFG["hb"])
OBSERVE = float(CFG["observe"])     # s a restored guest is watched after its first heartbeat
SETS = CFG["sets"].split()          # "large": testguest.mem = 3/4 of RAM; "small": 16M
CHUNKS = CFG["chunks"].split()     # lazy chunk sizes in KiB; 64 is the VMM's
MODES = ["mapped", "eager"] + [m + ("" if c == "64" else f"@{c}k") for c in CHUNKS for m in ("lazy", "lazy+ws")]
CLK_TCK = os.sysconf("SC_CLK_TCK")
now = time.perf_counter
WATCH = None
SEQ = [0]
LOADED = re.compile(r"guest RAM (?:loaded from|load from) .*: (\d+) faults, chunks: (\d+) on fault, (\d+) preloaded, (\d+) in background"
                    r"(?:; complete (\d+) ms after the restore began)?")


def fresh(name):
    SEQ[0] += 1
    return os.path.join(WORK, f"{SEQ[0]:04d}-{name}")


def mib(size):
    return int(size[:-1]) * (1024 if size.endswith("G") else 1)


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vmm(*args, chunk=None):
    props = [f"-Dpanama.vmm.lazyChunkKiB={chunk}"] if chunk else []
    return [JAVA, "-XX:+UseSerialGC"] + props + ["-jar", JAR] + list(args)


def watch_heartbeats(console, proc, t0, seconds):
    """Heartbeat times (s after t0) of CPU 0 until `seconds` after the first one; raises on CORRUPT."""
    c = Console(console)
    try:
        c.wait(r"hb 0 \d+", WATCH, 120, proc)
        first = None
        while True:
            c.poll()
            hbs = [t - t0 for t, l in c.lines if re.fullmatch(r"hb 0 \d+", l)]
            first = hbs[0]
            if now() - t0 >= first + seconds:
                break
            WATCH.wait(0.02)
        bad = c.corrupt()
        if bad:
            raise BenchError(f"the test guest reported CORRUPT memory: {bad[0]}; see {console}")
        return hbs
    finally:
        c.close()


def full_speed(hbs):
    """The first heartbeat from which the next 5 gaps are all within 1.5 periods: the guest runs at full speed."""
    for i in range(len(hbs) - 5):
        if all(hbs[j + 1] - hbs[j] <= 1.5 * HB / 1e3 for j in range(i, i + 5)):
            return hbs[i]
    return None


def boot_and_save(size, mem):
    """A test guest of `size` RAM exercising `mem`, saved in full (its memfd RAM into the snapshot)."""
    sock, console, snap = fresh("boot.sock"), fresh("boot-console.txt"), fresh(f"{size}-{mem}.snap")
    p, _ = spawn(vmm("run", "--memory", size, "--api-socket", sock, "--console", f"file:{console}",
                     "--cmdline", f"console=ttyS0 testguest.mem={mem} testguest.hb={HB}"),
                 os.path.join(OUT, "logs", f"boot-{size}-{mem}.log"))
    c = Console(console)
    c.wait(r"ready", WATCH, 600, p)
    c.wait(r"hb 0 \d+", WATCH, 60, p, start=c.find(r"ready"))
    c.close()
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    rep = q.cmd("snapshot", path=snap)
    q.close()
    p.wait(60)
    log(f"saved {snap}: {rep}")
    return snap, rep.get("ram-bytes-written")


def panama_restore(snap, mode, tag):
    base, _, chunk = mode.partition("@")
    if base == "lazy":
        subprocess.run(["rm", "-f", os.path.join(snap, "working-set")])
    elif base == "lazy+ws" and not os.path.exists(os.path.join(snap, "working-set")):
        raise BenchError(f"{tag}: no working set beside {snap} after a lazy restore")
    console = fresh("restore-console.txt")
    la = loadavg()[0]
    os.environ["PANAMA_VMM_LOG"] = "RamLoader=debug"
    p, t0 = spawn(vmm("restore", "--memory-load", base.split("+")[0], snap, "--console", f"file:{console}",
                      chunk=chunk[:-1] if chunk else None),
                  os.path.join(OUT, "logs", f"{tag}.log"))
    hbs = watch_heartbeats(console, p, t0, OBSERVE)
    cpu = cpu_s(p.pid)
    stop(p)
    subprocess.run(["rm", "-f", console])
    with open(p.logpath, errors="replace") as f:
        m = LOADED.search(f.read())
    fs = full_speed(hbs)
    r = {"mode": mode, "first_hb_ms": hbs[0] * 1e3, "full_speed_ms": fs * 1e3 if fs is not None else None,
         "cpu_s": cpu, "load1": la, "max_gap_ms": max((b - a for a, b in zip(hbs, hbs[1:])), default=0) * 1e3}
    if m:
        r.update(faults=int(m.group(1)), chunks_on_fault=int(m.group(2)), chunks_preloaded=int(m.group(3)),
                 chunks_background=int(m.group(4)), loaded_ms=int(m.group(5)) if m.group(5) else None)
    log(f"{tag}: {r}")
    return r


def qemu_cmd(size, backend, sock, incoming):
    cmd = [QEMU, "-accel", "kvm", "-machine", "q35", "-m", size, "-object", backend, "-machine", "memory-backend=mem",
           "-bios", BIOS, "-nographic", "-nodefaults", "-serial", "none", "-qmp", f"unix:{sock},server,nowait"]
    return cmd + (["-incoming", "defer"] if incoming else [])


def qemu_save(size, mem):
    """QEMU's guest RAM in a file holding `mem` of random bytes, migrated in full (no x-ignore-shared) to a file."""
    ram, sock, dest = fresh("qemu.ram"), fresh("qmp.sock"), fresh(f"qemu-{size}-{mem}.mig")
    with open(ram, "wb") as f:
        f.truncate(mib(size) << 20)
    subprocess.run(["dd", "if=/dev/urandom", f"of={ram}", "bs=1M", f"count={mib(mem)}", "conv=notrunc", "status=none"],
                   check=True)
    p, _ = spawn(qemu_cmd(size, f"memory-backend-file,id=mem,size={size},mem-path={ram},share=on", sock, False),
                 os.path.join(OUT, "logs", f"qemu-save-{size}-{mem}.log"))
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
    q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    q.cmd("migrate", uri=f"exec:cat > {dest}")
    _, ev = q.wait_event(lambda e: e["event"] == "MIGRATION" and e["data"]["status"] in ("completed", "failed"), 300) \
        or (None, None)
    if ev is None or ev["data"]["status"] != "completed":
        raise BenchError(f"QEMU's save did not complete: {ev}")
    q.cmd("quit", check=False)
    q.close()
    p.wait(60)
    subprocess.run(["rm", "-f", ram])
    log(f"QEMU stream {dest}: {os.path.getsize(dest)} bytes")
    return dest


def qemu_restore(size, mig, tag):
    sock = fresh("qmp.sock")
    la = loadavg()[0]
    p, t_spawn = spawn(qemu_cmd(size, f"memory-backend-ram,id=mem,size={size}", sock, True),
                       os.path.join(OUT, "logs", f"{tag}.log"))
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
    t0 = now()
    q.cmd("migrate-incoming", uri=f"exec:cat {mig}")
    t1, _ = q.wait_event("RESUME", 300) or (None, None)
    if t1 is None:
        raise BenchError(f"{tag}: QEMU did not resume")
    cpu = cpu_s(p.pid)
    q.cmd("quit", check=False)
    q.close()
    p.wait(60)
    r = {"mode": "qemu", "first_hb_ms": (t1 - t_spawn) * 1e3, "incoming_ms": (t1 - t0) * 1e3, "cpu_s": cpu, "load1": la}
    log(f"{tag}: {r}")
    return r


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=0):
    return "-" if x is None else f"{x:.{digits}f}"


def summary(R):
    lines = [f"lazy-restore bench, {R['date']}, {RUNS} run(s) each, heartbeat period {HB} ms, snapshots on tmpfs",
             "times from spawning the restoring process (Panama: java -XX:+UseSerialGC -jar, no AOT cache; QEMU: to RESUME)",
             ""]
    for case in R["cases"]:
        lines.append(f"{case['size']} guest, testguest.mem={case['mem']} ({case['ram_bytes'] >> 20} MiB stored):")
        lines.append(f"  {'mode':<9} {'first hb ms':>11} {'full speed ms':>13} {'max gap ms':>10} {'CPU s':>6} "
                     f"{'faults':>7} {'preloaded':>9} {'all RAM in ms':>13}")
        by = {m: [r for r in case["runs"] if r["mode"] == m] for m in MODES + ["qemu"]}
        for m, rs in by.items():
            lines.append(f"  {m:<9} {fmt(med([r['first_hb_ms'] for r in rs])):>11} "
                         f"{fmt(med([r.get('full_speed_ms') for r in rs])):>13} "
                         f"{fmt(med([r.get('max_gap_ms') for r in rs])):>10} {fmt(med([r['cpu_s'] for r in rs]), 2):>6} "
                         f"{fmt(med([r.get('faults') for r in rs])):>7} {fmt(med([r.get('chunks_preloaded') for r in rs])):>9} "
                         f"{fmt(med([r.get('loaded_ms') for r in rs])):>13}")
        q = med([r["first_hb_ms"] for r in by["qemu"]])
        ratios = ", ".join(f"{m} {q / med([r['first_hb_ms'] for r in by[m]]):.2f}x" for m in MODES)
        lines.append(f"  QEMU's time to RESUME / Panama's to the first heartbeat: {ratios}")
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
            for s in SETS:
                mem = f"{mib(size) * 3 // 4}M" if s == "large" else "16M"
                print(f"== {size} guest, testguest.mem={mem}", flush=True)
                snap, stored = boot_and_save(size, mem)
                mig = qemu_save(size, mem)
                case = {"size": size, "mem": mem, "ram_bytes": stored, "qemu_stream_bytes": os.path.getsize(mig),
                        "runs": []}
                R["cases"].append(case)
                for i in range(RUNS):
                    for mode in MODES:   # lazy before lazy+ws: it records the working set that one uses
                        case["runs"].append(dict(panama_restore(snap, mode, f"{size}-{s}-{i}-{mode.replace('+', '-').replace('@', '-')}"), run=i))
                    case["runs"].append(dict(qemu_restore(size, mig, f"{size}-{s}-{i}-qemu"), run=i))
                subprocess.run(["rm", "-rf", snap, mig])
                time.sleep(3)   # freed memory goes back to the outer host (ENVIRONMENT.md)
        R["load_after"] = loadavg()
    finally:
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(R, f, indent=1)
    write_summary(OUT, R, summary)


if __name__ == "__main__":
    run_driver("lazy_restore_bench", main)
