#!/usr/bin/env python3
"""Pictures of the bench results: SVG files drawn from a results directory's results.json, with
python3's standard library only (no plotting package: the bench must run on a bare machine).

    charts.py RESULTS_DIR...                   # draws NAME.svg into each results directory
    charts.py --publish DOCS_DIR RESULTS_DIR... # and copies them to DOCS_DIR/img/, updating the
                                               # line under each picture in DOCS_DIR/benchmarks.md
    charts.py --check RESULTS_DIR...           # checks the SVG files a directory should hold

A results directory's kind comes from its name (standby-<time>, migrate-<time>, ...; see DRAWERS).
The SVG is plain: text as text, no scripts, a white background (readable in light and dark page
themes); every series is a <g> with a data-series attribute, which --check and the tests look for.
"""
import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import xml.etree.ElementTree as ET

SVG_NS = "http://www.w3.org/2000/svg"
# Panama's series in blues and greens, QEMU's in oranges and reds: the two sides tell apart at a glance.
PANAMA_COLOURS = ["#1f6fb4", "#2ca02c", "#17becf", "#5b4fc7", "#6b8e23", "#0b4f8a", "#3aa39a", "#8c6bb1"]
QEMU_COLOURS = ["#e6550d", "#c62828", "#b8860b", "#d6616b"]
FONT = 12
CHAR_W = 0.6 * FONT      # average glyph width of a sans-serif font: enough to lay out labels


class ChartError(Exception):
    """Results that cannot be drawn (missing or malformed fields): one line, no stack trace."""


def esc(s):
    return (str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))


def num(x):
    """A coordinate: short, no exponent."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def short(v):
    """Three significant digits or so, as the bench summaries print them."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def tick_label(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.10g}"
    return f"{v:.3g}"


# ---------------------------------------------------------------------------------------------
# Scales

class Scale:
    """Maps data values in [lo, hi] to pixels in [p0, p1]; log scales need lo > 0."""

    def __init__(self, lo, hi, p0, p1, log=False):
        if log and lo <= 0:
            raise ChartError("a log scale needs positive values")
        if hi <= lo:
            hi = lo * 2 if log else lo + 1
        self.lo, self.hi, self.p0, self.p1, self.log = lo, hi, p0, p1, log

    def __call__(self, v):
        f = self._t(v)
        return self.p0 + (self.p1 - self.p0) * (f - self._t(self.lo)) / (self._t(self.hi) - self._t(self.lo))

    def _t(self, v):
        return math.log10(v) if self.log else v

    def ticks(self):
        return log_ticks(self.lo, self.hi) if self.log else linear_ticks(self.lo, self.hi)


def nice_step(span, target=6):
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def linear_range(lo, hi, zero=True):
    """A range with round ends that holds [lo, hi] (and 0 when zero is set and values are positive)."""
    if zero and lo > 0:
        lo = 0.0
    if hi == lo:
        hi = lo + (abs(lo) or 1)
    step = nice_step(hi - lo)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def linear_ticks(lo, hi):
    step = nice_step(hi - lo)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def log_range(lo, hi):
    return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))


def log_ticks(lo, hi):
    """Decades, and 2 and 5 between them when the range spans at most two decades."""
    d0, d1 = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    mults = (1, 2, 5) if d1 - d0 <= 2 else (1,)
    out = []
    for d in range(d0, d1 + 1):
        for m in mults:
            v = m * 10 ** d
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append(v)
    return out


def wants_log(values, ratio=30):
    """A log scale when the values span more than `ratio` (orders of magnitude would squash the small ones)."""
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and bool(pos) and max(pos) / min(pos) > ratio


# ---------------------------------------------------------------------------------------------
# The SVG writer

class Svg:
    def __init__(self, width, height, title):
        self.w, self.h = width, height
        self.parts = [f'<svg xmlns="{SVG_NS}" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
                      f' font-family="Helvetica, Arial, sans-serif" font-size="{FONT}">',
                      f"<title>{esc(title)}</title>",
                      f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, anchor="start", size=FONT, weight=None, fill="#222222", rotate=None, baseline=None):
        attrs = f'x="{num(x)}" y="{num(y)}" text-anchor="{anchor}" fill="{fill}"'
        if size != FONT:
            attrs += f' font-size="{size}"'
        if weight:
            attrs += f' font-weight="{weight}"'
        if baseline:
            attrs += f' dominant-baseline="{baseline}"'
        if rotate is not None:
            attrs += f' transform="rotate({rotate} {num(x)} {num(y)})"'
        self.add(f"<text {attrs}>{esc(s)}</text>")

    def line(self, x1, y1, x2, y2, stroke="#222222", width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" stroke="{stroke}"'
                 f' stroke-width="{width}"{d}/>')

    def done(self):
        return "\n".join(self.parts + ["</svg>"]) + "\n"


def header(svg, title, subtitle):
    svg.text(svg.w / 2, 22, title, anchor="middle", size=15, weight="bold")
    if subtitle:
        svg.text(svg.w / 2, 40, subtitle, anchor="middle", size=11, fill="#555555")


def caption_line(svg, caption):
    svg.text(10, svg.h - 10, caption, size=10, fill="#555555")


def legend(svg, entries, x, y):
    """entries: (name, colour, shape) with shape "box", "dot" or "line"; one row each."""
    for i, (name, colour, shape) in enumerate(entries):
        yy = y + i * 18
        if shape in ("line", "dash"):
            svg.line(x, yy, x + 22, yy, stroke=colour, width=2, dash="6 4" if shape == "dash" else None)
            svg.add(f'<circle cx="{num(x + 11)}" cy="{num(yy)}" r="3.5" fill="{colour}"/>')
        else:
            svg.add(f'<rect x="{num(x + 4)}" y="{num(yy - 6)}" width="14" height="12" fill="{colour}"'
                    f' fill-opacity="0.35" stroke="{colour}"/>')
        svg.text(x + 28, yy + 4, name)


def value_axis_horizontal(svg, scale, y_top, y_bottom, label):
    """Ticks and grid lines of a value axis along x, label under it."""
    for t in scale.ticks():
        x = scale(t)
        svg.line(x, y_top, x, y_bottom, stroke="#dddddd")
        svg.line(x, y_bottom, x, y_bottom + 5)
        svg.text(x, y_bottom + 18, tick_label(t), anchor="middle")
    svg.line(scale.p0, y_bottom, scale.p1, y_bottom)
    svg.text((scale.p0 + scale.p1) / 2, y_bottom + 36, label + (" (log scale)" if scale.log else ""), anchor="middle")


def quartiles(xs):
    s = sorted(xs)
    if len(s) < 2:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=4, method="inclusive")
    return q[0], q[1], q[2]


def distributions(title, subtitle, groups, unit, caption, log=None):
    """A strip and box plot per group, one row each, values along x.

    groups: [{"name": row label, "values": [numbers], "side": "panama" | "qemu"}]; empty groups are left
    out. The box spans the quartiles, a thick line marks the median, every value is a dot (spread
    vertically in a fixed pattern so equal values stay visible). log: None picks a log scale when
    the values span more than a factor of 30."""
    groups = [g for g in groups if g["values"]]
    if not groups:
        raise ChartError(f"{title}: no values to draw")
    values = [v for g in groups for v in g["values"]]
    log = wants_log(values) if log is None else log
    label_w = max(len(g["name"]) for g in groups) * CHAR_W + 20
    left, right, top, row_h = max(150, label_w), 110, 60, 30   # right: the median of each row
    width = max(820, int(left + 520 + right))
    legend_h = 18 * 2 + 10
    height = int(top + row_h * len(groups) + 50 + legend_h + 30)
    svg = Svg(width, height, title)
    header(svg, title, subtitle)
    lo, hi = (log_range(min(values), max(values)) if log else linear_range(min(values), max(values)))
    x = Scale(lo, hi, left, width - right, log)
    y_bottom = top + row_h * len(groups)
    value_axis_horizontal(svg, x, top, y_bottom, unit)
    for i, g in enumerate(groups):
        colour = PANAMA_COLOURS[0] if g["side"] == "panama" else QEMU_COLOURS[0]
        yc = top + row_h * i + row_h / 2
        svg.add(f'<g class="series" data-series="{esc(g["name"])}">')
        svg.text(left - 10, yc + 4, g["name"], anchor="end")
        q1, med, q3 = quartiles(g["values"])
        svg.add(f'<rect x="{num(x(q1))}" y="{num(yc - 9)}" width="{num(max(1.0, x(q3) - x(q1)))}" height="18"'
                f' fill="{colour}" fill-opacity="0.18" stroke="{colour}"/>')
        svg.line(x(med), yc - 11, x(med), yc + 11, stroke=colour, width=3)
        for j, v in enumerate(g["values"]):
            dy = ((j * 7) % 11 - 5) * 1.2     # a fixed spread: the same file every time for the same data
            svg.add(f'<circle cx="{num(x(v))}" cy="{num(yc + dy)}" r="2.6" fill="{colour}" fill-opacity="0.75">'
                    f"<title>{esc(g['name'])}: {esc(tick_label(v))} {esc(unit)}</title></circle>")
        svg.text(width - right + 10, yc + 4, f"median {short(med)}", size=11, fill="#555555")
        svg.add("</g>")
    legend(svg, [("Panama VMM", PANAMA_COLOURS[0], "box"), ("QEMU", QEMU_COLOURS[0], "box")], left, y_bottom + 62)
    svg.text(left + 140, y_bottom + 66, "box: quartiles, thick line: median, dots: every measurement", size=11,
             fill="#555555")
    caption_line(svg, caption)
    return svg.done()


def lines(title, subtitle, series, xlabel, ylabel, caption, xlog=False, ylog=None, xticks=None):
    """Lines of y against x, one per series.

    series: [{"name", "side": "panama" | "qemu", "points": [(x, y) or (x, y, low, high)], "dash": bool}];
    low-high draws a bar (the range of the measurements behind a median). xticks: [(value, label)]
    instead of the scale's own ticks (sizes such as 256M, 4G, 16G)."""
    series = [s for s in series if s["points"]]
    if not series:
        raise ChartError(f"{title}: no points to draw")
    xs = [p[0] for s in series for p in s["points"]]
    ys = [v for s in series for p in s["points"] for v in p[1:]]
    ylog = wants_log(ys) if ylog is None else ylog
    left, right, top = 80, 30, 60
    legend_w = max(len(s["name"]) for s in series) * CHAR_W + 50
    width = max(820, int(left + 480 + legend_w + right))
    plot_r = width - right - legend_w
    height = 470
    plot_b = height - 80
    svg = Svg(width, height, title)
    header(svg, title, subtitle)
    if xlog:
        xlo, xhi = min(xs) / 1.5, max(xs) * 1.5
    else:
        xlo, xhi = linear_range(min(xs), max(xs))
    if xlo == xhi:
        xlo, xhi = (xlo / 2, xhi * 2) if xlog else (xlo - 1, xhi + 1)
    ylo, yhi = log_range(min(ys), max(ys)) if ylog else linear_range(min(ys), max(ys))
    X = Scale(xlo, xhi, left, plot_r, xlog)
    Y = Scale(ylo, yhi, plot_b, top, ylog)
    for t in Y.ticks():
        svg.line(left, Y(t), plot_r, Y(t), stroke="#dddddd")
        svg.line(left - 5, Y(t), left, Y(t))
        svg.text(left - 8, Y(t) + 4, tick_label(t), anchor="end")
    for t, label in (xticks or [(t, tick_label(t)) for t in X.ticks()]):
        svg.line(X(t), top, X(t), plot_b, stroke="#eeeeee")
        svg.line(X(t), plot_b, X(t), plot_b + 5)
        svg.text(X(t), plot_b + 18, label, anchor="middle")
    svg.line(left, plot_b, plot_r, plot_b)
    svg.line(left, top, left, plot_b)
    svg.text((left + plot_r) / 2, plot_b + 38, xlabel + (" (log scale)" if xlog else ""), anchor="middle")
    svg.text(18, (top + plot_b) / 2, ylabel + (" (log scale)" if ylog else ""), anchor="middle", rotate=-90)
    colours = {"panama": iter(PANAMA_COLOURS * 4), "qemu": iter(QEMU_COLOURS * 8)}
    entries = []
    for k, s in enumerate(series):
        colour = next(colours[s["side"]])
        # Series side by side at the same x, a few pixels apart, so that their min-max bars do not hide each other.
        dx = (k - (len(series) - 1) / 2) * 7 if any(len(p) == 4 for p in s["points"]) else 0
        entries.append((s["name"], colour, "dash" if s.get("dash") else "line"))
        pts = sorted(s["points"])
        svg.add(f'<g class="series" data-series="{esc(s["name"])}">')
        if len(pts) > 1:
            dash = ' stroke-dasharray="6 4"' if s.get("dash") else ""
            svg.add(f'<polyline points="{" ".join(f"{num(X(p[0]) + dx)},{num(Y(p[1]))}" for p in pts)}" fill="none"'
                    f' stroke="{colour}" stroke-width="2"{dash}/>')
        for p in pts:
            px = X(p[0]) + dx
            if len(p) == 4:
                svg.line(px, Y(p[2]), px, Y(p[3]), stroke=colour, width=1.5)
                for v in (p[2], p[3]):
                    svg.line(px - 3, Y(v), px + 3, Y(v), stroke=colour, width=1.5)
            svg.add(f'<circle cx="{num(px)}" cy="{num(Y(p[1]))}" r="3.5" fill="{colour}">'
                    f"<title>{esc(s['name'])}: {esc(tick_label(p[0]))}, {esc(tick_label(round(p[1], 3)))}</title></circle>")
        svg.add("</g>")
    legend(svg, entries, plot_r + 20, top + 10)
    caption_line(svg, caption)
    return svg.done()


# ---------------------------------------------------------------------------------------------
# Reading a results directory

def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ChartError(f"{path} is missing")
    except ValueError as e:
        raise ChartError(f"{path} is not valid JSON ({e})")


class Run:
    """What a results directory says about its run: results, config, date, commit, load, quick or not."""

    def __init__(self, directory):
        self.dir = directory.rstrip("/")
        self.name = os.path.basename(self.dir)
        self.results = read_json(os.path.join(self.dir, "results.json"))
        cfg = os.path.join(self.dir, "config.json")
        self.config = read_json(cfg) if os.path.exists(cfg) else {}
        env = {}
        if os.path.exists(os.path.join(self.dir, "env.txt")):
            with open(os.path.join(self.dir, "env.txt"), errors="replace") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    env.setdefault(k.strip(), v.strip())
        self.env = env
        r, c = self.results, self.config
        self.date = r.get("date") or env.get("date") or self.name.split("-")[-2]
        commit = r.get("commit") or c.get("commit")
        if not commit:
            m = re.search(r"\(git ([^)]*)\)", env.get("vmm.jar", ""))
            commit = m.group(1) if m else "unknown"
        self.commit = commit
        load = r.get("load_before")
        if load is None:
            m = re.search(r"load average: ([\d.]+)", env.get("uptime", "") + env.get("load", ""))
            load = [float(m.group(1))] if m else None
        elif isinstance(load, list):
            load = [float(x) for x in load]
        self.load = load[0] if load else None
        q = r.get("quick", c.get("quick"))
        self.quick = bool(q) if q is not None else None

    def caption(self, detail):
        self.detail = detail   # also in the line under a published picture
        load = f"load {self.load:.2f} at the start" if self.load is not None else "load not recorded"
        kind = "QUICK run (too few runs to be a result)" if self.quick else "full run"
        return f"{self.name}: {self.date}, git {self.commit}, {load}; {kind}, {detail}"


def med_range(xs):
    return (statistics.median(xs), min(xs), max(xs))


def size_mib(s):
    m = re.fullmatch(r"(\d+)([MG])", s)
    if not m:
        raise ChartError(f"unknown size {s!r}")
    return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


# ---------------------------------------------------------------------------------------------
# One drawer per bench script: results -> {file name: svg text}; SERIES names what --check expects.

def standby_quick(run):
    if run.quick is None:   # results made before the scripts recorded it: quick mode is 1 round, no variants
        run.quick = int(run.config.get("runs", 0)) == 1 and run.config.get("variants") == "none"
    return run.quick


STANDBY_QEMU = [("QEMU pre-started: migrate-incoming -> RESUME", "qemu_prestarted", "resume_ms"),
                ("QEMU cold: spawn -> RESUME", "qemu_cold", "resume_ms")]
STANDBY_PANAMA = [("Panama cold vmm restore, AOT: spawn -> first hb", "cold_aot", "hb_ms"),
                  ("Panama cold vmm restore, no AOT: spawn -> first hb", "cold_jit", "hb_ms"),
                  ("Panama standby: restore -> first hb", "standby_default", "hb_ms"),
                  ("Panama standby: restore -> reply", "standby_default", "reply_ms")]


def standby_groups(R):
    groups = []
    for name, key, field in STANDBY_QEMU:
        groups.append({"name": name, "side": "qemu", "values": [r[field] for r in R.get(key, []) if r.get(field) is not None]})
    for name, key, field in STANDBY_PANAMA:
        groups.append({"name": name, "side": "panama", "values": [r[field] for r in R.get(key, []) if r.get(field) is not None]})
    for v in R.get("variants", {}):
        if v != "default":
            groups.append({"name": f"Panama standby ({v}): restore -> reply", "side": "panama",
                           "values": [r["reply_ms"] for r in R.get(f"standby_{v}", []) if r.get("reply_ms") is not None]})
    return groups


def draw_standby(run):
    R = run.results
    standby_quick(run)
    if not R.get("qemu_prestarted"):
        raise ChartError(f"{run.dir}/results.json has no QEMU rows: the run did not get that far")
    rounds = len(R["qemu_prestarted"])
    svg = distributions("Start a VM from a snapshot: Panama VMM's modes beside QEMU 7.2's",
                        f"{R.get('size', '?')} guest RAM in a shared file, bypass snapshot / x-ignore-shared;"
                        " one dot per round", standby_groups(R), "ms",
                        run.caption(f"{rounds} round(s)"))
    return {"standby-restore.svg": svg}


def standby_series(run):
    return {"standby-restore.svg": [g["name"] for g in standby_groups(run.results) if g["values"]]}


def migrate_quick(run):
    if run.quick is None:
        run.quick = run.results.get("sizes") == ["256M"] and int(run.results.get("n", 0)) <= 3
    return run.quick


def migrate_series_data(R):
    def rows(rs, key):
        return [r[key] for r in rs if not r.get("warmup") and r.get(key) is not None]

    q_down, q_stop, p_down = [], [], []
    for s in R.get("sizes", []):
        x = size_mib(s)
        q = R.get("qemu1", {}).get(s, []) + R.get("qemu2", {}).get(s, [])
        if rows(q, "downtime_ms"):
            q_down.append((x,) + med_range(rows(q, "downtime_ms")))
        if rows(q, "stop_to_resume_ms"):
            q_stop.append((x,) + med_range(rows(q, "stop_to_resume_ms")))
        p = R.get("panama", {}).get(f"{s}-shared", [])
        if rows(p, "downtime_ms"):
            p_down.append((x,) + med_range(rows(p, "downtime_ms")))
    return [{"name": "QEMU: downtime (query-migrate)", "side": "qemu", "points": q_down},
            {"name": "QEMU: STOP -> RESUME events", "side": "qemu", "points": q_stop, "dash": True},
            {"name": "Panama VMM live update: pause -> resume", "side": "panama", "points": p_down}]


def draw_migrate(run):
    R = run.results
    migrate_quick(run)
    series = migrate_series_data(R)
    sizes = R.get("sizes", [])
    if not any(s["points"] for s in series):
        raise ChartError(f"{run.dir}/results.json has no measured migrations")
    svg = lines("Live update downtime against guest RAM size: Panama VMM beside QEMU 7.2",
                "local migration, guest RAM in a shared file (x-ignore-shared); median, bar: min-max",
                series, "guest RAM", "downtime, ms", run.caption(f"{R.get('n', '?')} migrations per size"),
                xlog=True, xticks=[(size_mib(s), s) for s in sizes])
    return {"migrate-downtime.svg": svg}


def migrate_series(run):
    return {"migrate-downtime.svg": [s["name"] for s in migrate_series_data(run.results) if s["points"]]}


def host_density_quick(run):
    if run.quick is None:
        run.quick = int(run.config.get("n", run.results.get("n", 0))) == 10 and int(run.config.get("lat", 0)) == 5
    return run.quick


def host_density_series_data(R):
    """Memory (MiB, PSS without the template file + page tables) against the number of VMs running.

    From the samples taken as the clones were added (`ramp`, recorded since the pictures exist);
    QEMU's processes are independent, so its line is the sum over its first i processes read at
    the end. Results made before the ramp existed give only the end point of each host."""
    out = []
    mib = 1024.0
    for mode, name in (("shared", "Panama vmm host --isolation shared"), ("process", "Panama vmm host --isolation process")):
        c = R.get(mode, {}).get("crowd", {})
        pts = [(s["n"], s["mib"]) for s in c.get("ramp", [])]
        if not pts and c:
            if mode == "shared":
                pts = [(0, c["host_pss0"] / mib), (R["n"], (c["host_pss"] - c["host_tpl_file"]) / mib)]
            else:
                w = [(p - f) / mib for p, f in zip(c["workers_pss"], c["workers_tpl_file"])]
                pts = [(i + 1, c["host_pss"] / mib + sum(w[:i + 1])) for i in range(len(w))]
        out.append({"name": name, "side": "panama", "points": pts})
    q = R.get("qemu", {})
    if q.get("pss"):
        w = [(p - f) / mib for p, f in zip(q["pss"], q["tpl_file"])]
        out.append({"name": "QEMU 7.2, one process per VM", "side": "qemu",
                    "points": [(i + 1, sum(w[:i + 1])) for i in range(len(w))]})
    return out


def draw_host_density(run):
    R = run.results
    host_density_quick(run)
    series = host_density_series_data(R)
    if not any(s["points"] for s in series):
        raise ChartError(f"{run.dir}/results.json has no crowd: the run did not get that far")
    ramp = any(R.get(m, {}).get("crowd", {}).get("ramp") for m in ("shared", "process"))
    how = ("Panama: sampled as the clones were added" if ramp else "Panama: read once at the end (no samples in this run)")
    svg = lines(f"Memory against the number of VMs: {R.get('memory', '64M')} clones of one template",
                f"PSS of the VMM processes without the template's file pages; {how}; QEMU: its first i processes at the end",
                series, "VMs running", "memory, MiB", run.caption(f"N = {R.get('n', '?')}"), ylog=False)
    return {"host-density-memory.svg": svg}


def host_density_series(run):
    return {"host-density-memory.svg": [s["name"] for s in host_density_series_data(run.results) if s["points"]]}


# prefix of the results directory -> (draw, expected series per file, quick?)
DRAWERS = {
    "standby": (draw_standby, standby_series, standby_quick),
    "migrate": (draw_migrate, migrate_series, migrate_quick),
    "host-density": (draw_host_density, host_density_series, host_density_quick),
}


def kind_of(directory):
    m = re.fullmatch(r"(.+)-\d{8}-\d{6}", os.path.basename(directory.rstrip("/")))
    return m.group(1) if m and m.group(1) in DRAWERS else None


def draw(directory):
    """Draws a results directory's pictures into it; returns (run, [paths written])."""
    kind = kind_of(directory)
    if kind is None:
        raise ChartError(f"{directory}: not a results directory of a bench that draws pictures "
                         f"({', '.join(k + '-<time>' for k in DRAWERS)})")
    run = Run(directory)
    written = []
    for name, text in DRAWERS[kind][0](run).items():
        path = os.path.join(directory, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)   # never a half-written picture
        written.append(path)
    return run, written


def check(directory):
    """The pictures a results directory should hold: well-formed SVG with every expected series.
    Returns a list of problems (empty: all good)."""
    kind = kind_of(directory)
    if kind is None:
        return [f"{directory}: not a results directory of a bench that draws pictures"]
    problems = []
    run = Run(directory)
    for name, expected in DRAWERS[kind][1](run).items():
        path = os.path.join(directory, name)
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            problems.append(f"{path} is missing or empty")
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            problems.append(f"{path} is not well-formed XML: {e}")
            continue
        if root.tag != f"{{{SVG_NS}}}svg":
            problems.append(f"{path}: the root element is {root.tag}, not svg")
        if root.find(f".//{{{SVG_NS}}}script") is not None:
            problems.append(f"{path} holds a script")
        found = {g.get("data-series") for g in root.iter(f"{{{SVG_NS}}}g") if g.get("data-series")}
        for s in expected:
            if s not in found:
                problems.append(f"{path} lacks the series {s!r}")
        if not expected:
            problems.append(f"{path}: its results have no series to draw")
    return problems


# ---------------------------------------------------------------------------------------------
# Publishing: docs/img/NAME.svg and the line under its picture in docs/benchmarks.md

def publish(run, paths, docs):
    img = os.path.join(docs, "img")
    os.makedirs(img, exist_ok=True)
    md_path = os.path.join(docs, "benchmarks.md")
    with open(md_path) as f:
        md = f.read()
    for path in paths:
        name = os.path.basename(path)
        shutil.copyfile(path, os.path.join(img, name) + ".tmp")
        os.replace(os.path.join(img, name) + ".tmp", os.path.join(img, name))
        load = f"load {run.load:.2f} at the start" if run.load is not None else "load not recorded"
        kind = "a QUICK run (too few runs to be a result)" if run.quick else "not a quick run"
        # The marker ends the line: a line that starts with "<!--" would be an HTML block, not Markdown.
        line = (f"From `bench/results/{run.name}/` ({run.date}, git {run.commit}, {load}): {kind}, {run.detail}."
                f" <!-- from: {name} -->")
        md, n = re.subn(rf"^.*<!-- from: {re.escape(name)} -->$", lambda _: line, md, flags=re.M)
        if n == 0:
            print(f"charts: note: docs/benchmarks.md has no line ending in '<!-- from: {name} -->'; only the picture was copied",
                  file=sys.stderr)
    with open(md_path + ".tmp", "w") as f:
        f.write(md)
    os.replace(md_path + ".tmp", md_path)


def main(argv):
    ap = argparse.ArgumentParser(prog="charts.py", description="SVG pictures of bench results (see the module doc).")
    ap.add_argument("--publish", metavar="DOCS_DIR", help="copy the pictures to DOCS_DIR/img/ and update benchmarks.md")
    ap.add_argument("--check", action="store_true", help="check the pictures instead of drawing them")
    ap.add_argument("dirs", nargs="+", metavar="RESULTS_DIR")
    a = ap.parse_args(argv)
    if a.check and a.publish:
        ap.error("--check and --publish do not go together")
    failed = False
    for d in a.dirs:
        try:
            if not os.path.isdir(d):
                raise ChartError(f"{d} is not a directory")
            if a.check:
                problems = check(d)
                for p in problems:
                    print(f"charts: {p}", file=sys.stderr)
                failed |= bool(problems)
                if not problems:
                    print(f"charts: {d}: pictures ok")
                continue
            run, paths = draw(d)
            for p in paths:
                print(f"picture: {p}")
            if a.publish:
                publish(run, paths, a.publish)
                for p in paths:
                    print(f"published: {os.path.join(a.publish, 'img', os.path.basename(p))}")
        except ChartError as e:
            print(f"charts: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
