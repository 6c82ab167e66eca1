"""Memory of one long-running `vmm serve` over many clone/destroy cycles (bench/run-serve-memory-bench).

Config (JSON, argv[1]): vmm (the launcher), java_home, work, out, cycles, checkpoints, memory,
cmdline, nmt, java_opts (added to the JVM's options through JAVA_TOOL_OPTIONS). Makes a template, starts `vmm serve` (no rehearsal), then one clone at a time:
`clone {"template": T}`, `destroy {"id": ...}`, its console file removed. At each checkpoint
(cycles done) it records the serve process's PSS and RSS (/proc/PID/smaps_rollup), open fds,
threads and mappings, and, with nmt, `jcmd PID VM.native_memory summary` and GC.heap_info.
Writes results.json and summary.txt to out; exits non-zero when a cycle fails.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def sample(pid):
    r = bl.rollup(pid)
    with open(f"/proc/{pid}/maps") as f:
        maps = sum(1 for _ in f)
    return {"pss_kib": r["Pss"], "rss_kib": r["Rss"], "pss_anon_kib": r.get("Pss_Anon", 0),
            "pss_file_kib": r.get("Pss_File", 0), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task")), "mappings": maps}


def jcmd(cfg, pid, what, path):
    with open(path, "w") as f:
        subprocess.run([os.path.join(cfg["java_home"], "bin", "jcmd"), str(pid)] + what.split(),
                       stdout=f, stderr=subprocess.STDOUT, timeout=60)


def main():
    cfg = json.load(open(sys.argv[1]))
    work, out = cfg["work"], cfg["out"]
    bl.set_log(os.path.join(out, "driver.log"))
    template = os.path.join(work, "template")
    consoles = os.path.join(work, "consoles")
    os.makedirs(consoles, exist_ok=True)
    sock = os.path.join(work, "api.sock")
    # Inherited by every process started (spawn() passes the environment on).
    os.environ["PANAMA_VMM_NO_REHEARSAL"] = "1"
    extra = cfg["java_opts"] + (" -XX:NativeMemoryTracking=summary" if cfg["nmt"] else "")
    if extra.strip():
        os.environ["JAVA_TOOL_OPTIONS"] = (os.environ.get("JAVA_TOOL_OPTIONS", "") + " " + extra).strip()

    rc = subprocess.run([cfg["vmm"], "template", "create", template, "--memory", cfg["memory"],
                         "--mem-dir", work, "--cmdline", cfg["cmdline"]],
                        stdout=open(os.path.join(out, "template.log"), "wb"), stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise bl.BenchError(f"vmm template create failed ({rc}); see {out}/template.log")

    serve, _ = bl.spawn([cfg["vmm"], "serve", "--api-socket", sock, "--console-dir", consoles],
                        os.path.join(out, "serve.log"))
    # ./vmm execs java: the process started is the JVM.
    api = bl.JsonLines(sock, proc=serve, timeout=120)
    checkpoints = sorted(set(cfg["checkpoints"] + [cfg["cycles"]]))
    rows = [dict(cycles=0, **sample(serve.pid))]
    t0 = time.monotonic()
    for n in range(1, cfg["cycles"] + 1):
        ret = api.cmd("clone", template=template)
        cid = ret["clones"][0]["id"]
        api.cmd("destroy", id=cid)
        try:
            os.unlink(os.path.join(consoles, cid + ".log"))
        except FileNotFoundError:
            pass
        if n in checkpoints:
            row = dict(cycles=n, seconds=round(time.monotonic() - t0, 1), **sample(serve.pid))
            rows.append(row)
            bl.log(f"checkpoint {row}")
            print(f"  {n:5d} cycles  PSS {row['pss_kib'] / 1024:6.1f} MiB  RSS {row['rss_kib'] / 1024:6.1f} MiB"
                  f"  fds {row['fds']:3d}  threads {row['threads']:3d}  mappings {row['mappings']:4d}"
                  f"  ({row['seconds']} s)", flush=True)
            if cfg["nmt"]:
                jcmd(cfg, serve.pid, "VM.native_memory summary", os.path.join(out, f"nmt-{n}.txt"))
                jcmd(cfg, serve.pid, "GC.heap_info", os.path.join(out, f"heap-{n}.txt"))
                with open(f"/proc/{serve.pid}/smaps") as src, open(os.path.join(out, f"smaps-{n}.txt"), "w") as dst:
                    dst.write(src.read())
    api.cmd("quit", check=False)
    api.close()
    bl.stop(serve)

    json.dump({"config": cfg, "rows": rows}, open(os.path.join(out, "results.json"), "w"), indent=1)
    by = {r["cycles"]: r for r in rows}
    last = rows[-1]
    lines = [f"`vmm serve`, {cfg['cycles']} clone/destroy cycles of a {cfg['memory']} template, one at a time"]
    mid = max((c for c in by if 0 < c <= last["cycles"] * 0.4), default=None)
    if mid:
        d = (last["pss_kib"] - by[mid]["pss_kib"]) / 1024
        lines.append(f"PSS after {mid} cycles {by[mid]['pss_kib'] / 1024:.1f} MiB, after {last['cycles']}"
                     f" {last['pss_kib'] / 1024:.1f} MiB: {d:+.1f} MiB")
        flat = all(by[mid][k] == last[k] for k in ("fds", "threads", "mappings"))
        for k in ("fds", "threads", "mappings"):
            lines.append(f"{k}: {by[mid][k]} -> {last[k]}")
        lines.append("plateau (PSS within 8 MiB, fds, threads and mappings flat): "
                     + ("MET" if d <= 8 and flat else "MISSED"))
    open(os.path.join(out, "summary.txt"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except bl.BenchError as e:
        print(f"serve-memory: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        bl.end_all()
