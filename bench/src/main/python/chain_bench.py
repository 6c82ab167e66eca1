#!/usr/bin/env python3
"""Chained templates: clone latency and memory per clone at depths 1, 2 and 3. The driver of
bench/run-chain-bench (which builds, copies the VMM's jars and cleans up; its header says what is
measured). No peer has chained templates, so depth 1 (a clone of a booted template, as today) is
the reference:

    chain_bench.py CONFIG.json     (written by run-chain-bench)
"""
import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BenchError, Console, DirWatch, JsonLines, fmt_num, log, mappings_of, now, pct, raise_priority,
                      rollup, run_driver, set_log, spawn, write_summary)

CFG = json.load(open(sys.argv[1]))
OUT, WORK = CFG["out"], CFG["work"]
JAVA, JAR = CFG["java"], CFG["jar"]
N, WARMUP, KEEP, SETTLE = int(CFG["n"]), int(CFG["warmup"]), int(CFG["keep"]), float(CFG["settle"])
MEMORY = CFG["memory"]
CMDLINE = CFG["cmdline"]
EXERCISED_KIB = int(CFG["exercised_mib"]) * 1024
DEPTHS = [1, 2, 3]
HB = r"hb \d+ \d+"


def logs(name):
    return os.path.join(OUT, "logs", name)


def vmm(*args):
    return [JAVA, "-XX:+UseSerialGC", "-Xshare:auto", "-jar", JAR] + list(args)


def serve(label):
    """A `vmm serve` (started as ./vmm starts it) with its API and console directory."""
    consdir = os.path.join(WORK, f"serve-{label}")
    os.makedirs(consdir)
    sock = os.path.join(WORK, f"serve-{label}.sock")
    cmd = vmm("serve", "--api-socket", sock, "--console-dir", consdir)
    cmd.insert(1, "-Xms8m")
    p, _ = spawn(cmd, logs(f"serve-{label}.log"))
    return p, JsonLines(sock, p), DirWatch(consdir)


def end_serve(p, api, watch):
    api.cmd("quit")
    api.close()
    watch.close()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"serve did not exit after quit; see {p.logpath}")


def clone(p, api, watch, template):
    """One clone of template; returns (id, console, its timings) once it printed its first heartbeat."""
    ret, t0, t1 = api.call("clone", template=template)
    c = ret["clones"][0]
    con = Console(c["console"])
    th, _ = con.wait(HB, watch, 60, p)
    entry = next(x for x in api.cmd("query-clones") if x["id"] == c["id"])
    return c["id"], con, {"reply_ms": (t1 - t0) * 1e3, "duration_ms": ret["duration-ms"],
                          "first_entry_ms": entry["first-entry-ms"], "first_hb_ms": (th - t0) * 1e3}


def settle(p, clones):
    """Waits until the guests have read all their memory once (their mappings' Rss, which also means
    they rewrote their share in that pass), then SETTLE s more; returns how long that took."""
    t0 = time.monotonic()
    while mappings_of(p.pid, WORK + "/").get("Rss", 0) < clones * EXERCISED_KIB:
        if p.poll() is not None:
            raise BenchError(f"serve exited; see {p.logpath}")
        if time.monotonic() - t0 > 300:
            raise BenchError(f"{clones} clone(s) did not touch {EXERCISED_KIB // 1024} MiB each within 300 s")
        time.sleep(0.2)
    time.sleep(SETTLE)
    return time.monotonic() - t0


def check(con, where):
    bad = con.corrupt()
    if bad:
        raise BenchError(f"a clone of {where} reported CORRUPT memory: {bad[0]}")
    con.close()


def main():
    set_log(os.path.join(OUT, "driver.log"))
    results = {"config": CFG, "nice": raise_priority(), "templates": {}, "latency": {d: [] for d in DEPTHS},
               "memory": {}}
    tpl = {1: os.path.join(WORK, "t1")}

    # The chain: a template booted, then twice a clone of the newest made into a template.
    print("== templates: depth 1 booted, depths 2 and 3 from clones", flush=True)
    memdir = os.path.join(WORK, "mem")
    os.makedirs(memdir)
    t0 = now()
    p, _ = spawn(vmm("template", "create", tpl[1], "--memory", MEMORY, "--cmdline", CMDLINE, "--mem-dir", memdir),
                 logs("template-create.log"))
    if p.wait(300) != 0:
        raise BenchError(f"template create failed; see {p.logpath}")
    results["templates"][1] = {"create_ms": (now() - t0) * 1e3}
    p, api, watch = serve("chain")
    for d in DEPTHS[1:]:
        tpl[d] = os.path.join(WORK, f"t{d}")
        cid, con, _ = clone(p, api, watch, tpl[d - 1])
        settle(p, 1)
        made, c0, c1 = api.call("template-create", id=cid, path=tpl[d])
        if made["depth"] != d:
            raise BenchError(f"template-create made depth {made['depth']}, not {d}")
        results["templates"][d] = {"create_ms": (c1 - c0) * 1e3, "paused_ms": made["paused-ms"],
                                   "layer_bytes": made["layer-bytes"], "layer_runs": made["layer-runs"]}
        log(f"depth {d}: {made}")
        api.cmd("destroy", id=cid)
        check(con, tpl[d - 1])
    end_serve(p, api, watch)

    # Latency: one serve; clones of each depth in turn, one at a time, each destroyed before the next.
    print(f"== latency: {WARMUP} + {N} clones per depth, in turn", flush=True)
    p, api, watch = serve("latency")
    for i in range(WARMUP + N):
        for d in (DEPTHS if i % 2 == 0 else list(reversed(DEPTHS))):
            cid, con, row = clone(p, api, watch, tpl[d])
            api.cmd("destroy", id=cid)
            check(con, tpl[d])
            if i >= WARMUP:
                results["latency"][d].append(row)
    end_serve(p, api, watch)

    # Memory: per depth a new serve with KEEP clones running until each has verified all its memory
    # (and rewritten its share), and SETTLE s more; guest RAM's mappings are those of files under WORK.
    print(f"== memory: {KEEP} clones running per depth", flush=True)
    for d in DEPTHS:
        p, api, watch = serve(f"memory-{d}")
        cons = [clone(p, api, watch, tpl[d])[1] for _ in range(KEEP)]
        settled = settle(p, KEEP)
        ram = mappings_of(p.pid, WORK + "/")
        total = rollup(p.pid)
        results["memory"][d] = {"clones": KEEP, "guest_pss_kib": ram.get("Pss", 0), "guest_rss_kib": ram.get("Rss", 0),
                                "guest_anon_kib": ram.get("Anonymous", 0), "mappings": ram["count"],
                                "process_pss_kib": total.get("Pss", 0), "settled_s": settled}
        for con in cons:
            check(con, tpl[d])
        end_serve(p, api, watch)

    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_summary(OUT, results, summary)


def summary(r):
    lines = [f"Chained templates: {MEMORY} guest ({CMDLINE}), clones in vmm serve; depth 1 = today's clone "
             f"(no peer has chained templates). Times in ms, memory in MiB.",
             "",
             f"{'depth':>5} {'layer':>8} {'runs':>5} {'made in':>8} {'paused':>7}   "
             f"{'reply p50':>9} {'p99':>7} {'entry p50':>9} {'1st hb p50':>10} {'p99':>7}   "
             f"{'PSS/clone':>9} {'anon/clone':>10} {'maps/clone':>10}"]
    base = None
    for d in DEPTHS:
        t = r["templates"][d]
        lat = r["latency"][d]
        m = r["memory"][d]
        reply = [x["reply_ms"] for x in lat]
        entry = [x["first_entry_ms"] for x in lat if x["first_entry_ms"] is not None]
        hb = [x["first_hb_ms"] for x in lat]
        pss = m["guest_pss_kib"] / 1024 / m["clones"]
        row = (f"{d:>5} {fmt_num(t.get('layer_bytes', 0) / 2**20):>8} {t.get('layer_runs', 0):>5} "
               f"{fmt_num(t['create_ms']):>8} {fmt_num(t.get('paused_ms')):>7}   "
               f"{fmt_num(pct(reply, 50)):>9} {fmt_num(pct(reply, 99)):>7} {fmt_num(pct(entry, 50)):>9} "
               f"{fmt_num(pct(hb, 50)):>10} {fmt_num(pct(hb, 99)):>7}   "
               f"{fmt_num(pss):>9} {fmt_num(m['guest_anon_kib'] / 1024 / m['clones']):>10} "
               f"{fmt_num(m['mappings'] / m['clones']):>10}")
        lines.append(row)
        if base is None:
            base = (pct(reply, 50), pct(hb, 50), pss)
        else:
            lines.append(f"{'':>5} vs depth 1: reply x{pct(reply, 50) / base[0]:.2f}, first heartbeat "
                         f"x{pct(hb, 50) / base[1]:.2f}, PSS per clone x{pss / base[2]:.2f}")
    lines.append("")
    lines.append(f"{N} clones per depth (after {WARMUP} warm-up rounds), depths in turn; memory with {r['memory'][1]['clones']} "
                 f"clones of one depth running in one serve, until each has read its {EXERCISED_KIB // 1024} MiB once and "
                 f"{SETTLE:g} s more. layer: the template's layer "
                 f"file (MiB of pages, runs); made in: template-create's reply time, paused: the clone's pause.")
    return "\n".join(lines)


run_driver("run-chain-bench", main)
