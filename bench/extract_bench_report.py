#!/usr/bin/python3
"""Helper of extract_bench.sh: turns one measured command into a JSON line, and JSON lines into the tables.

  extract_bench_report.py record --config NAME --tool ours|pytorch --mode end-to-end|forward-only
                                 --precision fp32|bf16 --rep N --stdout FILE --time FILE
                                 --stat-before "LINE" --stat-after "LINE" --load "LOADAVG" [--images-expected N]
  extract_bench_report.py table RESULTS.jsonl [--markdown]
  extract_bench_report.py memory RESULTS.jsonl [--markdown]

`record` reads the command's stdout (ours prints indented JSON, the peer one line), /usr/bin/time's
"%e %U %S %M" line (wall s, user s, system s, peak RSS KiB), and two /proc/stat "cpu" lines taken before and
after the command: the CPU the whole machine spent minus what the command spent is what other processes took
while it ran ("foreign" cores), the honest measure of how quiet the machine was.
"""
import argparse
import json
import re
import os
import statistics
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def busy_seconds(stat_line):
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in user)
    f = [int(x) for x in stat_line.split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / CLK_TCK


def parse_stdout(path):
    text = open(path, encoding="utf-8").read().strip()
    start = text.find("{")
    if start < 0:
        raise SystemExit(f"no JSON in {path}: {text[-500:]}")
    return json.loads(text[start:])


def record(a):
    out = parse_stdout(a.stdout)
    wall, user, system, rss_kib = open(a.time, encoding="utf-8").read().split()[:4]
    wall, cpu = float(wall), float(user) + float(system)
    foreign = max(0.0, busy_seconds(a.stat_after) - busy_seconds(a.stat_before) - cpu) / max(wall, 1e-3)
    rate = out.get("imagesPerSecond", out.get("images_per_s"))
    images = out.get("images")
    if a.images_expected is not None and images != a.images_expected:
        raise SystemExit(f"{a.config}: {images} images, expected {a.images_expected}")
    line = {
        "config": a.config, "tool": a.tool, "mode": a.mode, "precision": a.precision, "rep": a.rep,
        "images": images, "seconds": out.get("seconds"), "images_per_s": rate,
        "process_wall_s": wall, "process_images_per_s": round(images / wall, 2) if images else None,
        "process_cpu_s": round(cpu, 2), "peak_rss_mib": round(int(rss_kib) / 1024, 1),
        "foreign_cores": round(foreign, 2), "loadavg_before": a.load, "output": out,
    }
    if a.rss_samples:
        # "elapsed_s rss_kib" lines sampled while the process ran: the shape of its memory over time.
        samples = [l.split() for l in open(a.rss_samples, encoding="utf-8") if l.strip()]
        line["rss_samples_mib"] = [[float(t), round(int(k) / 1024, 1)] for t, k in samples]
        if samples:
            line["rss_at_end_mib"] = round(int(samples[-1][1]) / 1024, 1)
    if a.shard_log:
        # The worker's own figures after each shard ("Shard N of KEY: ... resident R MiB, managed heap M MiB"):
        # memory against images extracted, which is what "does not grow with the dataset" is about.
        pattern = re.compile(r"Shard (\d+) of \S+: (\d+) images, (\d+) skipped.*resident (\d+) MiB, managed heap (\d+) MiB")
        shards = [tuple(int(g) for g in m.groups()) for m in map(pattern.search, open(a.shard_log, encoding="utf-8")) if m]
        line["shards_memory_mib"] = [[s, resident, managed] for s, _, _, resident, managed in sorted(shards)]
    print(json.dumps(line, separators=(",", ":")))


def load(path):
    return [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]


def summarize(rows):
    by = {}
    for r in rows:
        if r.get("mode") in ("end-to-end", "forward-only"):
            by.setdefault(r["config"], []).append(r)
    return {c: {
        "rows": rs,
        "median": statistics.median(r["images_per_s"] for r in rs),
        "min": min(r["images_per_s"] for r in rs),
        "max": max(r["images_per_s"] for r in rs),
        "process_median": statistics.median(r["process_images_per_s"] for r in rs),
        "foreign": statistics.median(r["foreign_cores"] for r in rs),
        "foreign_max": max(r["foreign_cores"] for r in rs),
    } for c, rs in by.items()}


def emit(headers, body, markdown):
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("| " + " | ".join("---" for _ in headers) + " |")
        for row in body:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in body:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def table(a):
    rows = load(a.results)
    s = summarize(rows)
    if not s:
        raise SystemExit(f"no measurements in {a.results}")
    body = []
    for config, v in s.items():
        r0 = v["rows"][0]
        body.append([config, r0["mode"], str(len(v["rows"])), f"{v['median']:.1f}", f"{v['min']:.1f}", f"{v['max']:.1f}",
                     f"{v['process_median']:.1f}" if r0["mode"] == "end-to-end" else "",
                     f"{v['foreign']:.2f} / {v['foreign_max']:.2f}"])
    emit(["configuration", "mode", "runs", "images/s median", "min", "max", "whole process images/s", "other load, cores (median / max)"],
         body, a.markdown)
    print()

    def best_peer(precision, key="median"):
        peers = [(c, v) for c, v in s.items() if v["rows"][0]["tool"] == "pytorch"
                 and v["rows"][0]["mode"] == "end-to-end" and v["rows"][0]["precision"] == precision]
        return max(peers, key=lambda cv: cv[1][key]) if peers else (None, None)

    def find(tool, mode, precision):
        for c, v in s.items():
            r0 = v["rows"][0]
            if (r0["tool"], r0["mode"], r0["precision"]) == (tool, mode, precision):
                return c, v
        return None, None

    ratios = []
    for precision in ("fp32", "bf16"):
        oc, ov = find("ours", "end-to-end", precision)
        pc, pv = best_peer(precision)
        fc, fv = find("ours", "forward-only", precision)
        qc, qv = find("pytorch", "forward-only", precision)
        if ov and pv:
            r = ov["median"] / pv["median"]
            ratios.append([f"ours end-to-end / peer best end-to-end, {precision}", f"{r:.2f}", "≥ 1.2",
                           "met" if r >= 1.2 else "NOT met", f"{ov['median']:.1f} / {pv['median']:.1f} ({pc})"])
            _, pw = best_peer(precision, "process_median")
            r = ov["process_median"] / pw["process_median"]
            ratios.append([f"  same, whole-process wall clock, {precision}", f"{r:.2f}", "(info)", "",
                           f"{ov['process_median']:.1f} / {pw['process_median']:.1f}"])
        if ov and fv:
            r = ov["median"] / fv["median"]
            ratios.append([f"ours end-to-end / ours forward-only, {precision}", f"{r:.2f}", "≥ 0.85",
                           "met" if r >= 0.85 else "NOT met", f"{ov['median']:.1f} / {fv['median']:.1f}"])
        if pv and qv:
            r = pv["median"] / qv["median"]
            ratios.append([f"peer end-to-end / peer forward-only, {precision}", f"{r:.2f}", "(info)", "",
                           f"{pv['median']:.1f} / {qv['median']:.1f}"])
        if fv and qv:
            r = fv["median"] / qv["median"]
            ratios.append([f"ours forward-only / peer forward-only, {precision}", f"{r:.2f}", "(info)", "",
                           f"{fv['median']:.1f} / {qv['median']:.1f}"])
    if ratios:
        emit(["ratio (medians)", "value", "target", "", "images/s"], ratios, a.markdown)


def memory(a):
    rows = [r for r in load(a.results) if r.get("mode") == "memory"]
    if not rows:
        raise SystemExit(f"no memory measurements in {a.results}")
    body = [[f"{r['images']:,}", f"{r['peak_rss_mib']:.0f}", f"{r['images_per_s']:.1f}", f"{r['process_wall_s']:.0f}",
             f"{r.get('rss_at_end_mib', float('nan')):.0f}", f"{r['foreign_cores']:.2f}"] for r in rows]
    emit(["images", "peak RSS MiB", "images/s", "process wall s", "RSS in the last sample MiB", "other load, cores"], body, a.markdown)
    # The largest run, shard by shard: resident and managed memory after every tenth of the shards.
    largest = max(rows, key=lambda r: r["images"])
    shards = largest.get("shards_memory_mib") or []
    if shards:
        print()
        picks = sorted({shards[min(len(shards) - 1, round(i * (len(shards) - 1) / 10))][0] for i in range(11)})
        by_index = {s: (resident, managed) for s, resident, managed in shards}
        per_shard = largest["images"] / len(shards)
        body = [[f"{s}", f"{(s + 1) * per_shard:,.0f}", f"{by_index[s][0]}", f"{by_index[s][1]}"] for s in picks]
        emit([f"shard ({largest['images']:,}-image run)", "images done (about)", "resident MiB after it", "managed heap MiB"], body, a.markdown)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    for name in ("--config", "--tool", "--mode", "--precision", "--stdout", "--time", "--stat-before", "--stat-after", "--load"):
        r.add_argument(name, required=True)
    r.add_argument("--rep", type=int, required=True)
    r.add_argument("--images-expected", type=int)
    r.add_argument("--rss-samples")
    r.add_argument("--shard-log")
    for name in ("table", "memory"):
        t = sub.add_parser(name)
        t.add_argument("results")
        t.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    {"record": record, "table": table, "memory": memory}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
