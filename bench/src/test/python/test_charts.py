"""Tests of bench/src/main/python/charts.py (the SVG pictures of bench results).

    python3 -m unittest discover -s bench/src/test/python      (bench/quick-check runs it)
"""
import json
import os
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "main", "python"))
import charts  # noqa: E402

NS = {"s": charts.SVG_NS}


def read(path):
    with open(path) as f:
        return f.read()


def series_of(svg_text):
    root = ET.fromstring(svg_text)
    return [g.get("data-series") for g in root.iter(f"{{{charts.SVG_NS}}}g") if g.get("data-series")]


def texts_of(svg_text):
    return [t.text for t in ET.fromstring(svg_text).iter(f"{{{charts.SVG_NS}}}text")]


class Ticks(unittest.TestCase):
    def test_linear_ticks_are_round_and_cover_the_range(self):
        lo, hi = charts.linear_range(3.2, 87.0)
        self.assertEqual((lo, hi), (0.0, 100.0))
        self.assertEqual(charts.linear_ticks(lo, hi), [0, 20, 40, 60, 80, 100])

    def test_log_ticks_are_decades_over_a_wide_range(self):
        lo, hi = charts.log_range(2.5, 870)
        self.assertEqual((lo, hi), (1, 1000))
        self.assertEqual(charts.log_ticks(lo, hi), [1, 10, 100, 1000])

    def test_log_ticks_add_2_and_5_over_a_narrow_range(self):
        self.assertEqual(charts.log_ticks(1, 100), [1, 2, 5, 10, 20, 50, 100])

    def test_log_scale_only_when_values_span_orders_of_magnitude(self):
        self.assertTrue(charts.wants_log([5, 12, 900]))
        self.assertFalse(charts.wants_log([5, 12, 90]))
        self.assertFalse(charts.wants_log([0, 12, 900]))   # zero has no place on a log scale

    def test_scale_maps_ends_to_pixels(self):
        s = charts.Scale(1, 1000, 100, 400, log=True)
        self.assertAlmostEqual(s(1), 100)
        self.assertAlmostEqual(s(10), 200)
        self.assertAlmostEqual(s(1000), 400)


class Drawing(unittest.TestCase):
    GROUPS = [{"name": "QEMU pre-started", "side": "qemu", "values": [10.5, 11.2, 9.8]},
              {"name": "Panama standby <warm> & ready", "side": "panama", "values": [4.1, 5.0, 4.4]},
              {"name": "Panama cold", "side": "panama", "values": [540.0, 610.0]},
              {"name": "empty", "side": "panama", "values": []}]

    def test_distributions_are_plain_svg_with_one_group_per_mode(self):
        svg = charts.distributions("Restore", "sub", self.GROUPS, "ms", "run X: a caption")
        root = ET.fromstring(svg)   # well-formed, special characters escaped
        self.assertEqual(root.tag, f"{{{charts.SVG_NS}}}svg")
        self.assertIsNone(root.find(".//s:script", NS))
        first = list(root)[1]
        self.assertEqual((first.tag, first.get("fill")), (f"{{{charts.SVG_NS}}}rect", "#ffffff"))
        self.assertEqual(series_of(svg), ["QEMU pre-started", "Panama standby <warm> & ready", "Panama cold"])
        texts = texts_of(svg)
        self.assertIn("run X: a caption", texts)
        self.assertIn("ms (log scale)", texts)          # 4.1 .. 610 spans more than a factor of 30
        self.assertIn("median 4.40", texts)
        dots = root.findall(".//s:g[@data-series='Panama cold']/s:circle", NS)
        self.assertEqual(len(dots), 2)

    def test_distributions_stay_linear_over_a_narrow_range(self):
        svg = charts.distributions("t", "", self.GROUPS[:2], "ms", "c")
        self.assertIn("ms", texts_of(svg))
        self.assertNotIn("ms (log scale)", texts_of(svg))

    def test_lines_draw_every_series_and_the_given_x_labels(self):
        series = [{"name": "QEMU", "side": "qemu", "points": [(256, 30.0, 20.0, 41.0), (4096, 31.0, 25.0, 40.0)]},
                  {"name": "Panama", "side": "panama", "points": [(256, 3.0), (4096, 3.2), (16384, 3.1)]}]
        svg = charts.lines("t", "s", series, "RAM", "ms", "cap", xlog=True,
                           xticks=[(256, "256M"), (4096, "4G"), (16384, "16G")])
        self.assertEqual(series_of(svg), ["QEMU", "Panama"])
        self.assertTrue({"256M", "4G", "16G", "RAM (log scale)", "cap"} <= set(texts_of(svg)))
        root = ET.fromstring(svg)
        self.assertEqual(len(root.findall(".//s:g[@data-series='Panama']/s:polyline", NS)), 1)

    def test_nothing_to_draw_is_a_chart_error(self):
        with self.assertRaises(charts.ChartError):
            charts.distributions("t", "", [{"name": "a", "side": "qemu", "values": []}], "ms", "c")
        with self.assertRaises(charts.ChartError):
            charts.lines("t", "", [{"name": "a", "side": "qemu", "points": []}], "x", "y", "c")


def write_results(root, name, results, config=None):
    d = os.path.join(root, name)
    os.makedirs(d)
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(results, f)
    if config is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f)
    return d


STANDBY = {"size": "256M", "date": "2026-12-04 01:02:03 UTC", "commit": "abc1234", "load_before": [0.5, 0.4, 0.3],
           "variants": {"default": [], "xms8m": ["-Xms8m"]},
           "qemu_prestarted": [{"resume_ms": 10.1}, {"resume_ms": 11.0}],
           "qemu_cold": [{"resume_ms": 120.0}, {"resume_ms": 130.0}],
           "standby_default": [{"reply_ms": 4.0, "hb_ms": 9.0}, {"reply_ms": 4.5, "hb_ms": 9.5}],
           "standby_xms8m": [{"reply_ms": 4.2, "hb_ms": 9.1}, {"reply_ms": 4.4, "hb_ms": 9.3}],
           "cold_jit": [{"hb_ms": 800.0}, {"hb_ms": 850.0}], "cold_aot": [{"hb_ms": 500.0}, {"hb_ms": 520.0}]}
MIGRATE = {"date": "2026-12-04 02:00:00 UTC", "load_before": ["1.50", "1.0", "0.9"], "sizes": ["256M", "4G"], "n": 2,
           "commit": "def5678", "quick": False,
           "qemu1": {s: [{"warmup": True, "downtime_ms": 99}, {"warmup": False, "downtime_ms": 20, "stop_to_resume_ms": 30},
                         {"warmup": False, "downtime_ms": 22, "stop_to_resume_ms": 33}] for s in ("256M", "4G")},
           "qemu2": {},
           "panama": {f"{s}-shared": [{"warmup": False, "downtime_ms": 3.0}, {"warmup": False, "downtime_ms": 4.0}]
                      for s in ("256M", "4G")}}
HOST_DENSITY = {"n": 2, "memory": "64M", "date": "2026-12-04 03:00:00 UTC", "load_before": [2.0, 1, 1],
                "shared": {"crowd": {"host_pss0": 80 * 1024, "host_pss": 100 * 1024, "host_tpl_file": 10 * 1024,
                                     "ramp": [{"n": 0, "mib": 80.0}, {"n": 1, "mib": 85.0}, {"n": 2, "mib": 90.0}]}},
                "process": {"crowd": {"host_pss": 20 * 1024, "workers_pss": [50 * 1024, 52 * 1024],
                                      "workers_tpl_file": [1024, 1024]}},
                "qemu": {"pss": [15 * 1024, 15 * 1024], "tpl_file": [0, 0]}}


class ResultsDirectories(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_each_bench_draws_its_picture_and_the_check_passes(self):
        dirs = [write_results(self.root, "standby-20261204-010203", STANDBY, {"runs": 2, "variants": "xms8m"}),
                write_results(self.root, "migrate-20261204-020000", MIGRATE),
                write_results(self.root, "host-density-20261204-030000", HOST_DENSITY, {"n": 2, "lat": 30, "quick": True})]
        for d in dirs:
            run, paths = charts.draw(d)
            self.assertEqual(len(paths), 1)
            self.assertEqual(charts.check(d), [])
        svg = read(os.path.join(dirs[0], "standby-restore.svg"))
        self.assertIn("Panama standby (xms8m): restore -> reply", series_of(svg))
        self.assertIn("standby-20261204-010203: 2026-12-04 01:02:03 UTC, git abc1234, load 0.50 at the start; full run",
                      "".join(texts_of(svg)))
        migrate = read(os.path.join(dirs[1], "migrate-downtime.svg"))
        self.assertIn("QEMU: downtime (query-migrate)", series_of(migrate))
        host = read(os.path.join(dirs[2], "host-density-memory.svg"))
        self.assertEqual(series_of(host), ["Panama vmm host --isolation shared", "Panama vmm host --isolation process",
                                           "QEMU 7.2, one process per VM"])
        self.assertIn("QUICK run", "".join(texts_of(host)))

    def test_the_ramp_is_drawn_as_sampled(self):
        d = write_results(self.root, "host-density-20261204-030000", HOST_DENSITY)
        data = charts.host_density_series_data(charts.Run(d).results)
        self.assertEqual(data[0]["points"], [(0, 80.0), (1, 85.0), (2, 90.0)])
        self.assertEqual(data[1]["points"], [(1, 20 + 49.0), (2, 20 + 49.0 + 51.0)])   # no ramp: the end reading
        self.assertEqual(data[2]["points"], [(1, 15.0), (2, 30.0)])

    def test_old_results_say_whether_they_were_quick(self):
        quick = write_results(self.root, "standby-20261203-194409", STANDBY, {"runs": 1, "variants": "none"})
        self.assertTrue(charts.standby_quick(charts.Run(quick)))
        mig = dict(MIGRATE, sizes=["256M"], n=3)
        del mig["quick"]
        self.assertTrue(charts.migrate_quick(charts.Run(write_results(self.root, "migrate-20261203-224427", mig))))

    def test_the_check_finds_a_broken_or_incomplete_picture(self):
        d = write_results(self.root, "migrate-20261204-020000", MIGRATE)
        charts.draw(d)
        path = os.path.join(d, "migrate-downtime.svg")
        text = read(path)
        with open(path, "w") as f:
            f.write(text.replace('data-series="QEMU: STOP -&gt; RESUME events"', 'data-series="other"'))
        self.assertEqual(charts.check(d), [f"{path} lacks the series 'QEMU: STOP -> RESUME events'"])
        with open(path, "w") as f:
            f.write(text[:len(text) // 2])
        self.assertIn("is not well-formed XML", charts.check(d)[0])
        os.unlink(path)
        self.assertEqual(charts.check(d), [f"{path} is missing or empty"])

    def test_bad_input_is_one_line_and_writes_nothing(self):
        d = os.path.join(self.root, "standby-20261204-010203")
        os.makedirs(d)
        with open(os.path.join(d, "results.json"), "w") as f:
            f.write("{not json")
        with self.assertRaisesRegex(charts.ChartError, "is not valid JSON"):
            charts.draw(d)
        self.assertEqual(os.listdir(d), ["results.json"])
        with self.assertRaisesRegex(charts.ChartError, "not a results directory"):
            charts.draw(self.root)
        self.assertEqual(charts.main([os.path.join(self.root, "nowhere")]), 1)

    def test_publish_copies_the_picture_and_rewrites_its_line(self):
        d = write_results(self.root, "migrate-20261204-020000", MIGRATE)
        docs = os.path.join(self.root, "docs")
        os.makedirs(docs)
        with open(os.path.join(docs, "benchmarks.md"), "w") as f:
            f.write("# B\n![x](img/migrate-downtime.svg)\n\nFrom an older run. <!-- from: migrate-downtime.svg -->\nrest\n")
        self.assertEqual(charts.main(["--publish", docs, d]), 0)
        self.assertTrue(os.path.exists(os.path.join(docs, "img", "migrate-downtime.svg")))
        md = read(os.path.join(docs, "benchmarks.md"))
        self.assertIn("\n\nFrom `bench/results/migrate-20261204-020000/` (2026-12-04 02:00:00 UTC, git def5678, load 1.50 "
                      "at the start): not a quick run, 2 migrations per size. <!-- from: migrate-downtime.svg -->\nrest\n", md)


if __name__ == "__main__":
    unittest.main()
