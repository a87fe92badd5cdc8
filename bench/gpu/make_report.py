#!/usr/bin/env python3
"""Merges the outputs of `scripts/gpu-check.sh run` into one Markdown report (stdlib only).

    python3 bench/gpu/make_report.py --work WORKDIR --out OUTDIR/gpu-report.md [--command STR]

WORKDIR is the folder the run step fills (every file is optional; what is missing is reported
as missing, never a crash):
  steps.tsv            name, kind, verdict, rc, seconds, log, command (tab-separated, one step a
                       line; kind is test | sanitizer | bench | peer | info; verdict pass | fail |
                       timeout | skipped | missing | ok)
  gpu.csv              nvidia-smi --query-gpu=name,driver_version,memory.total,... (one line)
  nvidia-smi.txt       plain `nvidia-smi` (the CUDA version is read from its banner)
  build-info.txt       written by `gpu-check.sh prepare` (commit, rustc, nvcc, date)
  a3d-bench.jsonl      `a3d bench fusion --json` lines: op, pass, device, dtype, shape,
                       median_ms, copy_ms, ratio_to_copy, min_bytes, gb_per_s, copy_gb_per_s
  torch-peer.jsonl     bench/gpu/torch_peer.py --json lines: op, pass, dtype, shape, median_ms
  torch-peer.err       its stderr; the line `versions: {...}` gives torch/CUDA/cuDNN versions
  <log> of each step   libtest output (`test result:` lines) or compute-sanitizer output
                       (`ERROR SUMMARY: N errors`)

Also writes summary.json next to the report (the numbers of the tables, machine-readable).

Definitions used in the tables:
  GB/s               min_bytes / median time (min_bytes: bytes the pass must move at the least)
  % of copy BW       gb_per_s / copy_gb_per_s * 100; the copy moves 2 * x_bytes (read + write)
                     and is measured in the same run
  vs PyTorch         PyTorch einsum time / a3d time (> 1: a3d is faster); forward vs forward,
                     backward (a3d grad_input + grad_weight) vs y.backward(dy), forward+backward
                     (a3d forward + backward) vs PyTorch forward_backward
  targets            forward, grad_input >= 85 % of copy BW; grad_weight >= 70 %;
                     forward and forward+backward >= 3x faster than PyTorch
"""

import argparse
import datetime
import json
import math
import os
import re
import sys

DTYPE_BYTES = {"f32": 4, "float32": 4, "f16": 2, "float16": 2, "bf16": 2, "bfloat16": 2, "f64": 8}
BW_TARGET = {"forward": 85.0, "grad_input": 85.0, "grad_weight": 70.0}
SPEEDUP_TARGET = {"forward": 3.0, "forward+backward": 3.0}
# The symmetric operators: shifts move bytes (forward and backward at copy speed), the depth
# convolution's backward reads two tensors and writes one; each must beat its PyTorch peer.
OP_BW_TARGET = {
    "tsm": {"forward": 85.0, "backward": 85.0},
    "alignshift": {"forward": 85.0, "backward": 85.0},
    "depthconv": {"forward": 85.0, "backward": 70.0},
    # Gathers and scatters, not streams: judged against torchvision only.
    "roi_align": {},
    "nms": {},
}
OP_SPEEDUP_TARGET = {op: {"forward": 1.0, "forward+backward": 1.0} for op in OP_BW_TARGET}
# PyTorch peer rows name their op by what PyTorch runs.
TORCH_OP = {"einsum": "fusion"}
TORCH_PASS = {"forward": "forward", "backward": "backward", "forward+backward": "forward_backward"}
PASS_ORDER = ["forward", "grad_input", "grad_weight", "backward", "forward+backward"]

TEST_RESULT = re.compile(
    r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured; (\d+) filtered out")
ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors?")


# ---------------------------------------------------------------------------- reading inputs

def read_text(path, limit=None):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read(limit) if limit else f.read()
    except OSError:
        return None


def read_jsonl(path):
    """JSON objects of a JSON-lines file; other lines (tables, warnings) are skipped."""
    rows, bad = [], 0
    text = read_text(path)
    if text is None:
        return None, 0
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows, bad


def read_steps(work):
    steps = []
    text = read_text(os.path.join(work, "steps.tsv")) or ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split("\t")
        f += [""] * (7 - len(f))
        steps.append({
            "name": f[0], "kind": f[1], "verdict": f[2], "rc": f[3], "seconds": f[4],
            "log": f[5], "command": f[6],
        })
    return steps


def libtest_counts(text):
    """Sums of the libtest summary lines, or None when there is none."""
    if not text:
        return None
    tot = {"passed": 0, "failed": 0, "ignored": 0, "filtered": 0, "lines": 0}
    for m in TEST_RESULT.finditer(text):
        tot["passed"] += int(m.group(2))
        tot["failed"] += int(m.group(3))
        tot["ignored"] += int(m.group(4))
        tot["filtered"] += int(m.group(6))
        tot["lines"] += 1
    return tot if tot["lines"] else None


def failure_excerpt(text, max_lines=40):
    """Names of failed tests and the start of libtest's `failures:` section."""
    if not text:
        return []
    lines = text.splitlines()
    out = [l for l in lines if re.match(r"^test .* \.\.\. FAILED", l)]
    out += sorted(set(l for l in lines if "skipped: no CUDA device" in l))
    try:
        start = lines.index("failures:")
        out += lines[start:start + max_lines]
    except ValueError:
        # no libtest failure section: a crash, a timeout or a panic outside a test
        tail = [l for l in lines if l.strip()][-15:]
        if tail and not libtest_counts(text):
            out += ["(no libtest summary; last lines:)"] + tail
    return out[:max_lines]


def sanitizer_info(text):
    if not text:
        return None, []
    found = ERROR_SUMMARY.findall(text)
    n = int(found[-1]) if found else None
    lines = [l for l in text.splitlines()
             if l.startswith("=========") and l.strip("= \t")
             and "COMPUTE-SANITIZER" not in l and "ERROR SUMMARY" not in l]
    return n, lines[:30]


def gpu_info(work):
    info = {}
    csv = read_text(os.path.join(work, "gpu.csv"))
    if csv:
        first = csv.strip().splitlines()[0] if csv.strip() else ""
        keys = ["name", "driver", "memory", "sm_clock", "max_sm_clock", "mem_clock", "temperature",
                "power", "power_limit", "persistence", "compute_mode"]
        for k, v in zip(keys, [v.strip() for v in first.split(",")]):
            info[k] = v
    smi = read_text(os.path.join(work, "nvidia-smi.txt"))
    if smi:
        m = re.search(r"CUDA Version:\s*([\d.]+)", smi)
        if m:
            info["cuda"] = m.group(1)
        if "driver" not in info:
            m = re.search(r"Driver Version:\s*([\d.]+)", smi)
            if m:
                info["driver"] = m.group(1)
    return info


def torch_versions(work):
    err = read_text(os.path.join(work, "torch-peer.err")) or ""
    for line in err.splitlines():
        if line.startswith("versions: "):
            try:
                return json.loads(line[len("versions: "):])
            except ValueError:
                pass
    return {}


# ---------------------------------------------------------------------------- numbers

def num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def key_of(row, torch=False):
    """(op, shape, dtype) of a JSON row; PyTorch rows map their op to a3d's name."""
    shape = row.get("shape")
    if isinstance(shape, str):
        shape = [int(s) for s in re.findall(r"\d+", shape)]
    op = str(row.get("op", "fusion"))
    if torch:
        op = TORCH_OP.get(op, op)
    return (op, tuple(int(s) for s in shape or ()), str(row.get("dtype", "?")))


def x_bytes(shape, dtype):
    n = 1
    for s in shape:
        n *= s
    return n * DTYPE_BYTES.get(dtype, 4)


def a3d_metrics(row, shape, dtype):
    """ms, GB/s, copy GB/s, % of copy BW, min_bytes of one a3d JSON row (derived where absent)."""
    ms = num(row.get("median_ms"))
    nbytes = num(row.get("min_bytes"))
    gbps = num(row.get("gb_per_s"))
    if gbps is None and nbytes and ms:
        gbps = nbytes / ms / 1e6
    cgbps = num(row.get("copy_gb_per_s"))
    copy_ms = num(row.get("copy_ms"))
    if cgbps is None and copy_ms:
        cgbps = 2 * x_bytes(shape, dtype) / copy_ms / 1e6
    pct = gbps / cgbps * 100 if gbps and cgbps else None
    return {"ms": ms, "gbps": gbps, "copy_gbps": cgbps, "copy_ms": copy_ms, "pct": pct,
            "bytes": nbytes}


def build_tables(a3d_rows, torch_rows):
    groups = {}
    order = []

    def group(k):
        if k not in groups:
            groups[k] = {"a3d": {}, "torch": {}}
            order.append(k)
        return groups[k]

    for r in a3d_rows:
        if "pass" in r and "median_ms" in r:
            group(key_of(r))["a3d"][r["pass"]] = r
    for r in torch_rows:
        if "pass" in r and "median_ms" in r:
            group(key_of(r, torch=True))["torch"][r["pass"]] = r

    tables = []
    for k in order:
        op, shape, dtype = k
        g = groups[k]
        bw_target = OP_BW_TARGET.get(op, BW_TARGET)
        speedup_target = OP_SPEEDUP_TARGET.get(op, SPEEDUP_TARGET)
        m = {p: a3d_metrics(r, shape, dtype) for p, r in g["a3d"].items()}
        notes = []
        # backward: the a3d `backward` pass, else grad_input + grad_weight
        if "backward" not in m and "grad_input" in m and "grad_weight" in m:
            gi, gw = m["grad_input"], m["grad_weight"]
            if gi["ms"] and gw["ms"]:
                b = (gi["bytes"] or 0) + (gw["bytes"] or 0)
                ms = gi["ms"] + gw["ms"]
                cg = gi["copy_gbps"] or gw["copy_gbps"]
                gb = b / ms / 1e6 if b else None
                m["backward"] = {"ms": ms, "gbps": gb, "copy_gbps": cg, "copy_ms": gi["copy_ms"],
                                 "pct": gb / cg * 100 if gb and cg else None, "bytes": b or None}
                notes.append("a3d backward = grad_input + grad_weight timed separately (no fused "
                             "`backward` row)")
        if "forward" in m and "backward" in m and m["forward"]["ms"] and m["backward"]["ms"]:
            f, b = m["forward"], m["backward"]
            ms = f["ms"] + b["ms"]
            nb = (f["bytes"] or 0) + (b["bytes"] or 0)
            cgs = [v for v in (f["copy_gbps"], b["copy_gbps"]) if v]
            cg = sum(cgs) / len(cgs) if cgs else None
            gb = nb / ms / 1e6 if nb else None
            m["forward+backward"] = {"ms": ms, "gbps": gb, "copy_gbps": cg, "copy_ms": f["copy_ms"],
                                     "pct": gb / cg * 100 if gb and cg else None, "bytes": nb or None}
        rows = []
        passes = [p for p in PASS_ORDER if p in m] + sorted(p for p in m if p not in PASS_ORDER)
        for p in passes:
            v = m[p]
            tp = TORCH_PASS.get(p)
            t_ms = num(g["torch"].get(tp, {}).get("median_ms")) if tp else None
            speedup = t_ms / v["ms"] if t_ms and v["ms"] else None
            checks = []  # (label, met: True/False/None)
            if p in bw_target:
                need = bw_target[p]
                checks.append((f"≥{need:.0f}% BW", None if v["pct"] is None else v["pct"] >= need))
            if p in speedup_target:
                need = speedup_target[p]
                checks.append((f"≥{need:.0f}x PyTorch", None if speedup is None else speedup >= need))
            rows.append({"pass": p, **v, "torch_ms": t_ms, "speedup": speedup, "checks": checks})
        tcopy = num(g["torch"].get("copy", {}).get("median_ms"))
        a_copy = next((v["copy_ms"] for v in m.values() if v.get("copy_ms")), None)
        xb = x_bytes(shape, dtype)
        tables.append({
            "op": op,
            "shape": list(shape), "dtype": dtype, "x_bytes": xb, "rows": rows, "notes": notes,
            "a3d_copy_ms": a_copy,
            "a3d_copy_gbps": 2 * xb / a_copy / 1e6 if a_copy else None,
            "torch_copy_ms": tcopy,
            "torch_copy_gbps": 2 * xb / tcopy / 1e6 if tcopy else None,
            "torch_only": not m,
        })
    return tables


# ---------------------------------------------------------------------------- formatting

def fmt(v, digits=3, suffix=""):
    return "—" if v is None else f"{v:.{digits}f}{suffix}"


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v:.4f}" if v < 1 else f"{v:.3f}"


def mark(met):
    return {True: "✓", False: "✗", None: "?"}[met]


def md_escape(s):
    return str(s).replace("|", "\\|")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Merge gpu-check outputs into a Markdown report.")
    ap.add_argument("--work", required=True, help="folder with steps.tsv, logs and JSON lines")
    ap.add_argument("--out", required=True, help="the Markdown file to write")
    ap.add_argument("--command", default="scripts/gpu-check.sh run \"$OUT\"")
    ap.add_argument("--started", default=None, help="start time (UTC, ISO 8601)")
    args = ap.parse_args(argv)
    work = args.work

    steps = read_steps(work)
    gpu = gpu_info(work)
    tv = torch_versions(work)
    build = (read_text(os.path.join(work, "build-info.txt")) or "").strip()
    a3d_rows, a3d_bad = read_jsonl(os.path.join(work, "a3d-bench.jsonl"))
    torch_rows, torch_bad = read_jsonl(os.path.join(work, "torch-peer.jsonl"))
    tables = build_tables(a3d_rows or [], torch_rows or [])

    checks_failed = [s for s in steps if s["kind"] in ("test", "sanitizer") and s["verdict"] != "pass"]
    other_failed = [s for s in steps if s["kind"] in ("bench", "peer", "info")
                    and s["verdict"] not in ("pass", "ok")]
    targets = [(t, r, c) for t in tables for r in t["rows"] for c in r["checks"]]
    met = sum(1 for *_, c in targets if c[1] is True)
    missed = sum(1 for *_, c in targets if c[1] is False)
    unknown = sum(1 for *_, c in targets if c[1] is None)

    L = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    L.append("# a3d GPU check")
    L.append("")
    interrupted = any(s["verdict"] == "interrupted" for s in steps)
    verdict = "FAIL" if checks_failed else "INCOMPLETE (interrupted)" if interrupted else "PASS"
    if not steps:
        verdict = "INCOMPLETE (no steps recorded)"
    L.append(f"**Verdict: {verdict}** — tests and sanitizers: "
             f"{sum(1 for s in steps if s['kind'] in ('test', 'sanitizer') and s['verdict'] == 'pass')} passed, "
             f"{len(checks_failed)} failed"
             + (f"; other steps failed: {', '.join(s['name'] for s in other_failed)}" if other_failed else "")
             + (f"; performance targets: {met} met, {missed} missed" + (f", {unknown} unknown" if unknown else "")
                if targets else "; performance targets: no a3d benchmark data")
             + ".")
    L.append("")
    L.append("| | |")
    L.append("| --- | --- |")
    L.append(f"| date | {args.started or now} (report written {now}) |")
    gname = gpu.get("name", "unknown (nvidia-smi gave nothing)")
    mem = f", {gpu['memory']}" if gpu.get("memory") else ""
    L.append(f"| GPU | {md_escape(gname)}{mem} |")
    L.append(f"| driver / CUDA | {gpu.get('driver', '?')} / {gpu.get('cuda', '?')} |")
    if gpu.get("sm_clock"):
        L.append(f"| state at start | SM clock {gpu.get('sm_clock')} (max {gpu.get('max_sm_clock', '?')}), "
                 f"memory clock {gpu.get('mem_clock', '?')}, {gpu.get('temperature', '?')} °C, "
                 f"power {gpu.get('power', '?')} / {gpu.get('power_limit', '?')}, "
                 f"persistence {gpu.get('persistence', '?')}, compute mode {gpu.get('compute_mode', '?')} |")
    if tv:
        L.append(f"| PyTorch | {tv.get('torch', '?')} (CUDA {tv.get('cuda', '?')}, cuDNN {tv.get('cudnn', '?')}, "
                 f"TF32 matmul {'on' if tv.get('tf32_matmul') else 'off'}, Python {tv.get('python', '?')}) |")
    else:
        L.append("| PyTorch | ? (torch_peer.py printed no versions) |")
    if build:
        L.append(f"| build | {md_escape('; '.join(build.splitlines()))} |")
    L.append(f"| command | `{args.command}` |")
    L.append("")

    # ---- tests
    L.append("## Tests")
    L.append("")
    test_steps = [s for s in steps if s["kind"] == "test"]
    excerpts = []
    if test_steps:
        L.append("| binary | verdict | passed | failed | ignored | filtered out | exit | seconds |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in test_steps:
            text = read_text(os.path.join(work, s["log"])) if s["log"] else None
            c = libtest_counts(text)
            ok = s["verdict"] == "pass"
            cells = [str(c[k]) for k in ("passed", "failed", "ignored", "filtered")] if c else ["—"] * 4
            L.append(f"| `{s['name']}` | {'✓' if ok else '✗'} {s['verdict']} | " + " | ".join(cells)
                     + f" | {s['rc']} | {s['seconds']} |")
            if not ok and s["verdict"] != "skipped":
                ex = failure_excerpt(text)
                if not ex:
                    ex = ["(no log)"] if text is None else ["(no output)"] if not text.strip() else \
                        ["(no libtest failure section; last lines:)"] + text.strip().splitlines()[-15:]
                excerpts.append((s["name"], s["log"], ex))
    else:
        L.append("No test step ran.")
    L.append("")

    # ---- sanitizers
    L.append("## compute-sanitizer")
    L.append("")
    san = [s for s in steps if s["kind"] == "sanitizer"]
    if san:
        L.append("| check | verdict | ERROR SUMMARY | tests passed / failed | exit | seconds | command |")
        L.append("| --- | --- | ---: | --- | ---: | ---: | --- |")
        for s in san:
            text = read_text(os.path.join(work, s["log"])) if s["log"] else None
            n, lines = sanitizer_info(text)
            c = libtest_counts(text)
            tc = f"{c['passed']} / {c['failed']}" if c else "—"
            ok = s["verdict"] == "pass"
            L.append(f"| {s['name']} | {'✓' if ok else '✗'} {s['verdict']} | "
                     f"{'—' if n is None else (f'{n} error' if n == 1 else f'{n} errors')} | {tc} | {s['rc']} | {s['seconds']} | "
                     f"`{md_escape(s['command'])}` |")
            if not ok and s["verdict"] != "skipped":
                if text is None:
                    ex = ["(no log)"]
                elif n is None:
                    ex = ["(no ERROR SUMMARY line: the tool did not finish or did not start; last lines:)"]
                else:
                    ex = []
                if c and c["passed"] == 0:
                    ex.append("(no test ran under the tool)")
                ex += lines or failure_excerpt(text) or [l for l in (text or "").splitlines() if l.strip()][-15:]
                excerpts.append((s["name"], s["log"], ex))
    else:
        L.append("No sanitizer step ran.")
    L.append("")

    # ---- benchmarks
    L.append("## Benchmarks: a3d vs PyTorch")
    L.append("")
    L.append("Median of the timed runs, in ms. GB/s = least bytes the pass must move / time. "
             "% of copy BW = GB/s over the bandwidth of a device-to-device copy of x measured in "
             "the same run (2·x bytes: read + write). vs PyTorch = PyTorch time / a3d time "
             "(`backward` = grad_input + grad_weight vs `y.backward(dy)`; forward+backward = "
             "a3d forward + backward vs PyTorch forward and backward in one region). "
             "Targets: fusion forward and grad_input ≥ 85 % of copy BW, grad_weight ≥ 70 %, "
             "forward and forward+backward ≥ 3x faster than the einsum; tsm / alignshift "
             "forward and backward ≥ 85 %, depthconv forward ≥ 85 % and backward ≥ 70 %, each "
             "faster than its PyTorch implementation (bench/torch_context_ops.py).")
    L.append("")
    if a3d_rows is None:
        L.append("_No a3d benchmark output (a3d-bench.jsonl missing)._")
        L.append("")
    elif not a3d_rows:
        L.append("_a3d benchmark printed no JSON lines._")
        L.append("")
    if a3d_bad:
        L.append(f"_{a3d_bad} a3d JSON lines could not be parsed._")
        L.append("")
    if torch_rows is None:
        L.append("_No PyTorch peer output (torch-peer.jsonl missing)._")
        L.append("")
    elif torch_bad:
        L.append(f"_{torch_bad} PyTorch JSON lines could not be parsed._")
        L.append("")
    for t in tables:
        shape = "[" + ", ".join(map(str, t["shape"])) + "]"
        L.append(f"### {t['op']} {shape} {t['dtype']}  (x = {t['x_bytes'] / 1e6:.1f} MB)")
        L.append("")
        if t["torch_only"]:
            L.append("_No a3d rows for this shape/dtype; PyTorch only:_ "
                     + ", ".join(f"{r['pass']} {fmt_ms(num(r.get('median_ms')))} ms"
                                 for r in (torch_rows or []) if key_of(r, torch=True) == (t['op'], tuple(t['shape']), t['dtype'])))
            L.append("")
            continue
        L.append("| a3d pass | median ms | GB/s | % of copy BW | PyTorch ms | vs PyTorch | target | met |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: | --- | :---: |")
        for r in t["rows"]:
            target = ", ".join(c[0] for c in r["checks"]) or "—"
            if r["checks"]:
                fails = [c[0] for c in r["checks"] if c[1] is False]
                unk = [c[0] for c in r["checks"] if c[1] is None]
                m = "✗" if fails else ("?" if unk else "✓")
                if len(r["checks"]) > 1 and (fails or unk):
                    m += " (" + " ".join(mark(c[1]) for c in r["checks"]) + ")"
            else:
                m = ""
            L.append(f"| {r['pass']} | {fmt_ms(r['ms'])} | {fmt(r['gbps'], 0)} | {fmt(r['pct'], 1, ' %')} | "
                     f"{fmt_ms(r['torch_ms'])} | {fmt(r['speedup'], 2, 'x')} | {target} | {m} |")
        L.append("")
        copy_bits = []
        if t["a3d_copy_ms"]:
            copy_bits.append(f"a3d {fmt_ms(t['a3d_copy_ms'])} ms ({fmt(t['a3d_copy_gbps'], 0)} GB/s)")
        if t["torch_copy_ms"]:
            copy_bits.append(f"PyTorch `copy_` {fmt_ms(t['torch_copy_ms'])} ms ({fmt(t['torch_copy_gbps'], 0)} GB/s)")
        if copy_bits:
            L.append("Copy of x (read + write): " + "; ".join(copy_bits) + ".")
        for n in t["notes"]:
            L.append(f"Note: {n}.")
        L.append("")

    for s in steps:
        if s["kind"] in ("bench", "peer") and s["verdict"] not in ("pass", "ok", "skipped"):
            err = s["log"][:-len(".jsonl")] + ".err" if s["log"].endswith(".jsonl") else s["log"]
            text = read_text(os.path.join(work, err)) or ""
            tail = [l for l in text.splitlines() if l.strip() and not l.startswith("versions: ")][-20:]
            excerpts.append((s["name"], err, tail or ["(no output on stderr)"]))

    # ---- failures
    if excerpts:
        L.append("## Failure excerpts")
        L.append("")
        for name, log, lines in excerpts:
            L.append(f"**{name}** (`{log or 'no log'}` in logs.tar.gz):")
            L.append("")
            L.append("```")
            L.extend(l[:300] for l in lines)
            L.append("```")
            L.append("")

    # ---- steps
    L.append("## Steps")
    L.append("")
    L.append("| step | kind | verdict | exit | seconds | command |")
    L.append("| --- | --- | --- | ---: | ---: | --- |")
    for s in steps:
        L.append(f"| {s['name']} | {s['kind']} | {s['verdict']} | {s['rc']} | {s['seconds']} | "
                 f"`{md_escape(s['command'])}` |")
    L.append("")
    L.append("Raw outputs next to this report: `a3d-bench.jsonl`, `torch-peer.jsonl`, `summary.json`, "
             "and every log in `logs.tar.gz`. Exit 124/137 = killed by the step's timeout.")
    L.append("")

    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(L))
    summary = {
        "verdict": verdict, "gpu": gpu, "torch": tv, "steps": steps,
        "targets": {"met": met, "missed": missed, "unknown": unknown},
        "tables": tables,
    }
    with open(os.path.join(os.path.dirname(os.path.abspath(args.out)), "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
