"""Shared pieces of the benchmark drivers: the JSON-lines client for the VMM's API and QEMU's QMP
(all of them); and for bench/run-clone-bench and bench/run-density-bench, processes that are
always ended, console files followed with inotify, PSS from /proc, percentiles.

Every process started through spawn() is recorded and ended (SIGTERM, then SIGKILL) by end_all(),
which the drivers call on the way out whatever the reason; the calling shell scripts also run
the drivers in their own process group and remove their scratch directory on exit.
"""
import ctypes
import json
import math
import os
import shutil
import re
import select
import signal
import socket
import subprocess
import sys
import time

now = time.perf_counter

# QEMU's CPU model for the benchmarks: the host's, without IA32_ARCH_CAPABILITIES. QEMU 7.2 with a
# plain `-cpu host` writes that MSR, and KVM on some hosts refuses it (AMD EPYC under PVM: "failed
# to set MSR 0x10a", then an assertion ends QEMU). The test guest never reads it.
QEMU_CPU = "host,-arch-capabilities"


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Processes

PROCS = []
_LOG = [None]


def set_log(path):
    _LOG[0] = open(path, "a")


def log(msg):
    if _LOG[0]:
        _LOG[0].write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        _LOG[0].flush()


def _child_priority():
    # The drivers try to run at a higher priority than what they measure (raise_priority); what
    # they start runs at the normal one.
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass


def raise_priority():
    """nice -10 for the driver (root only), so that with dozens of busy vCPU threads on two cores it
    still notices console lines and reads /proc promptly. Returns the nice value in effect."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def spawn(cmd, logpath, quiet=False):
    """Starts cmd with stdout+stderr to logpath; returns (process, perf_counter right before the fork)."""
    with open(logpath, "ab") as f:
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        t0 = now()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             preexec_fn=_child_priority)
    p.logpath = logpath
    PROCS.append(p)
    if not quiet:
        log(f"spawned {p.pid}: {' '.join(cmd)}")
    return p, t0


def stop(p, timeout=20):
    """SIGTERM, wait, SIGKILL; returns seconds until it was gone."""
    t0 = now()
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{p.pid} ignored SIGTERM for {timeout} s: SIGKILL")
            p.kill()
            p.wait()
    return now() - t0


def stop_all(procs, timeout=30):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        if p.poll() is None:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{p.pid} ignored SIGTERM: SIGKILL")
                p.kill()
                p.wait()


def end_all():
    stop_all(PROCS, 10)


def _on_signal(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


for _s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_s, _on_signal)


# ---------------------------------------------------------------------------------------------
# JSON lines on a Unix socket: the VMM's control API and QEMU's QMP have the same shape.

class JsonLines:
    """A QMP client (QEMU's, and Panama VMM's control API): connects (retrying until the server
    listens), keeps the greeting, negotiates capabilities, and files every event it reads in events
    as (perf_counter when read, event)."""

    def __init__(self, path, proc=None, timeout=60, poll=0.001):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if proc is not None and proc.poll() is not None:
                    raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before serving {path}; "
                                     f"see {getattr(proc, 'logpath', 'its log')}")
                if time.monotonic() > deadline:
                    raise BenchError(f"nothing listens on {path} after {timeout} s")
                time.sleep(poll)
        self.connected = now()
        self.sock = s
        self.timeout = timeout
        s.settimeout(timeout)
        self.buf = b""
        self.events = []
        self.greeting = self._read()
        # QMP's handshake (QEMU and Panama VMM both refuse other commands before it); a later
        # cmd("qmp_capabilities") is answered here, as the handshake is done.
        self.negotiated = False
        self.call("qmp_capabilities")
        self.negotiated = True

    def _read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("the control socket was closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, msg, fds=None):
        data = (json.dumps(msg) + "\n").encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)

    def call(self, name, check=True, **args):
        """Sends a command; returns (its "return", perf_counter when sent, when the reply arrived).
        An error reply raises BenchError, or with check=False comes back as a None return."""
        if name == "qmp_capabilities" and self.negotiated:
            return {}, now(), now()
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        t0 = now()
        self.send(msg)
        self.sock.settimeout(self.timeout)
        while True:
            r = self._read()
            if "event" in r:
                self.events.append((now(), r))
                continue
            if "error" in r:
                if check:
                    raise BenchError(f"{name} failed: {r['error']}")
                return None, t0, now()
            return r["return"], t0, now()

    def cmd(self, name, check=True, **args):
        """call() without the times: the command's "return"."""
        return self.call(name, check, **args)[0]

    def wait_event(self, match, timeout=600):
        """The first event matching (a name, or a predicate on the event), already read or coming,
        as (perf_counter when read, event), and forgotten; None after timeout seconds."""
        test = match if callable(match) else (lambda e: e.get("event") == match)
        deadline = time.monotonic() + timeout
        while True:
            for i, (t, e) in enumerate(self.events):
                if test(e):
                    del self.events[i]
                    return t, e
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                r = self._read()
            except socket.timeout:
                return None
            if "event" in r:
                self.events.append((now(), r))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Console files, followed with inotify (IN_MODIFY on their directory reports writes to any file in
# it), so a new line is seen within microseconds of its write instead of a polling period.

_libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY, IN_CREATE = 0x2, 0x100
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000


class DirWatch:
    def __init__(self, directory):
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise BenchError(f"inotify_init1: errno {ctypes.get_errno()}")
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_MODIFY | IN_CREATE) < 0:
            raise BenchError(f"inotify_add_watch {directory}: errno {ctypes.get_errno()}")

    def wait(self, timeout):
        """Blocks until something in the directory changed or timeout seconds passed."""
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if r:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self):
        os.close(self.fd)


class FileTail:
    """A file another process appends to (a VM's console): each read returns what it gained since
    the last one; nothing while the file does not exist yet."""

    def __init__(self, path):
        self.path = path
        self.f = None

    def read(self):
        if self.f is None:
            try:
                self.f = open(self.path, "rb")
            except FileNotFoundError:
                return b""
        return self.f.read()

    def close(self):
        if self.f:
            self.f.close()


class Console:
    """One console file: its lines, each with the perf_counter value at which it was first seen."""

    def __init__(self, path):
        self.path = path
        self.file = FileTail(path)
        self.partial = b""
        self.lines = []          # (time seen, text)
        self.scanned = 0

    def poll(self):
        data = self.file.read()
        if not data:
            return
        t = now()
        data = self.partial + data
        *whole, self.partial = data.split(b"\n")
        for w in whole:
            self.lines.append((t, w.decode(errors="replace")))

    def find(self, regex, start=0):
        r = re.compile(regex)
        for i in range(start, len(self.lines)):
            if r.fullmatch(self.lines[i][1]):
                return i
        return None

    def wait(self, regex, watch, timeout, proc=None, start=0):
        """Waits for a line matching regex (from line index start); returns (time seen, index)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            i = self.find(regex, start)
            if i is not None:
                return self.lines[i][0], i
            if proc is not None and proc.poll() is not None:
                self.poll()
                i = self.find(regex, start)
                if i is not None:
                    return self.lines[i][0], i
                raise BenchError(f"process {proc.pid} exited ({proc.returncode}) before {self.path} showed /{regex}/; see {proc.logpath}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no /{regex}/ in {self.path} within {timeout} s")
            watch.wait(min(left, 0.02))

    def corrupt(self):
        self.poll()
        return [l for _, l in self.lines if l.startswith("CORRUPT")]

    def close(self):
        self.file.close()


# ---------------------------------------------------------------------------------------------
# Memory

def rollup(pid):
    """/proc/PID/smaps_rollup as {field: KiB}."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out


def mappings_of(pid, path_prefix):
    """Sums over the mappings of files whose path starts with path_prefix: {field: KiB, "count": n}."""
    out = {"count": 0}
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split(None, 5)
                name = parts[5].strip() if len(parts) > 5 else ""
                cur = name.startswith(path_prefix)
                if cur:
                    out["count"] += 1
                continue
            if cur:
                m = re.match(r"(\w+):\s+(\d+) kB", line)
                if m:
                    out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
    return out


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


# ---------------------------------------------------------------------------------------------
# CPU of a VMM process

VCPU_THREAD = re.compile(r"^(CPU \d+/KVM|vcpu-\d+)$")   # QEMU (-name ...,debug-threads=on), Panama VMM
TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid):
    """(whole process, its vCPU threads, their system time) in CPU seconds, from /proc. A polling
    guest keeps its vCPU thread busy all the time; the rest of the process (device emulation, I/O)
    is what a device costs, and a vCPU thread's system time is mostly its exits handled in the kernel."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / TICK
    vcpu = vcpu_sys = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            if VCPU_THREAD.match(comm):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    t = f.read().rsplit(")", 1)[1].split()
                vcpu += (int(t[11]) + int(t[12])) / TICK
                vcpu_sys += int(t[12]) / TICK
        except OSError:
            pass                        # a thread that just ended
    return total, vcpu, vcpu_sys


def cpu_stat():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def steal_idle(stat0, stat1):
    d = [b - a for a, b in zip(stat0, stat1)]
    total = max(1, sum(d))
    return 100.0 * d[7] / total, 100.0 * d[3] / total


# ---------------------------------------------------------------------------------------------
# Statistics

def pct(xs, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def fmt_ms(xs):
    if not xs:
        return "n/a"
    return f"p50 {pct(xs, 50):7.2f}  p99 {pct(xs, 99):7.2f}  min {min(xs):7.2f}  max {max(xs):7.2f}"


def loadavg():
    """The 1-, 5- and 15-minute load averages."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def wait_for_quiet(wait_s, quiet_load, note=None):
    """Up to wait_s seconds until the 1-minute load average is below quiet_load; returns a note saying how it went.
    note(msg) hears each load reading while it waits (a driver's own log)."""
    note = note or log
    t0 = time.monotonic()
    la = loadavg()
    if la[0] < quiet_load:
        return f"quiet at the start (1-minute load {la[0]:.2f} < {quiet_load:g})"
    if wait_s <= 0:
        return f"not waited for a quiet machine (1-minute load {la[0]:.2f})"
    print(f"== waiting up to {wait_s} s for the 1-minute load average ({la[0]:.2f}) to drop below {quiet_load:g}", flush=True)
    while time.monotonic() - t0 < wait_s:
        time.sleep(10)
        la = loadavg()
        note(f"load {la}")
        if la[0] < quiet_load:
            return f"quiet after waiting {time.monotonic() - t0:.0f} s (1-minute load {la[0]:.2f} < {quiet_load:g})"
    return f"NOT quiet: the 1-minute load stayed >= {quiet_load:g} for {wait_s} s ({la[0]:.2f}); measured anyway"


def fmt_num(x):
    """A measurement for a table: '-' when missing, three significant digits or so."""
    return "-" if x is None or x != x else (f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}")


def write_summary(out_dir, results, summary):
    """summary.txt from summary(results), printed too (results.json is written even on failure, by the caller)."""
    text = summary(results)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print()
    print(text)


def run_driver(name, main):
    """Runs a driver's main: a BenchError is one line and exit 1; every process started is ended."""
    try:
        main()
    except BenchError as e:
        log(f"failed: {e}")
        print(f"{name}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_all()



def remove_template(tpl):
    """Removes a Panama template directory the benchmark made (templates are read-only, 0555 and
    0444, and hold a children/ directory since chained templates): the directory tree only, not its
    memory file, which the caller removes."""
    for root, dirs, _ in os.walk(tpl):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(tpl)

def save_qemu_template(cmd, sock, logpath, mig):
    """QEMU's docs/vm-templating: starts cmd (a VM with share=on RAM and QMP on sock), saves it with
    x-ignore-shared to the file mig once it runs, and ends it."""
    p, _ = spawn(cmd, logpath)
    q = JsonLines(sock, p)
    q.cmd("qmp_capabilities")
    if q.cmd("query-status")["status"] != "running":
        raise BenchError("the QEMU template VM is not running")
    time.sleep(0.3)
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
    q.cmd("migrate", uri=f"exec:cat > {mig}")
    deadline = time.monotonic() + 60
    while True:
        st = q.cmd("query-migrate").get("status")
        if st == "completed":
            break
        if st in ("failed", "cancelled") or time.monotonic() > deadline:
            raise BenchError(f"QEMU template save: {st}; see {p.logpath}")
        time.sleep(0.01)
    q.cmd("quit")
    q.close()
    p.wait(30)
