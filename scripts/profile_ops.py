"""Where a compiled step spends its device time: trace a few calls with jax.profiler and rank the kernels.

Used by bench_train.py / bench_generate.py (``--profile``); importable on its own:

    from profile_ops import profile_calls
    report = profile_calls(lambda: jax.block_until_ready(f(x)), compiled.as_text(), calls=3)

Each kernel event of the device planes (CPU: the XLA runtime's thunk events) is attributed to its HLO
instruction (the event's ``hlo_op`` stat), and each instruction to the JAX operation it came from (the
``op_name`` metadata of the optimized HLO text), so the table reads "transpose(jvp(...))/mlp/gate_proj/dot_general"
rather than "fusion.123". Times are per call. ``busy_fraction`` is the union of kernel intervals over the
traced wall time: far below 1 means the device waits for launches or the host (a launch-bound step).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict

import jax

_CONTROL = re.compile(r"^(while|conditional|call)(\.\d+)?$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*?op_name=\"([^\"]+)\"")


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> the JAX op_name of its metadata, from (optimized) HLO text."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def category(op_name: str, kernel: str) -> str:
    """A coarse bucket for one kernel: attention, matmul, collective, copy, or elementwise/reduction."""
    s = f"{op_name} {kernel}".lower()
    if "dot_product_attention" in s or "cudnn" in s or "flash" in s or "fmha" in s:
        return "attention"
    if any(t in s for t in ("all-reduce", "all_reduce", "all-gather", "reduce-scatter", "nccl", "psum")):
        return "collective"
    if any(t in s for t in ("gemm", "dot_general", "cublas", "xmma", "nvjet", "matmul", "einsum", "cutlass")):
        return "matmul"
    # The op's own name, not its path: every backward op's path starts with "transpose(jvp(...))".
    own = f"{op_name.rsplit('/', 1)[-1]} {kernel}".lower()
    if any(t in own for t in ("copy", "transpose", "memcpy", "memset", "dynamic_update_slice")):
        return "copy"
    return "elementwise/reduction"


def _device_events(data):
    """(plane name, event) for every event tied to an HLO instruction; device planes first, else the host.

    Device planes without events do not count: a process that has loaded another backend's plugin (libtpu, for
    ahead-of-time compilation) gets an empty "/device:TPU:..." plane while its programs run on the host."""
    planes = [p for p in data.planes
              if p.name.startswith("/device:") and any(True for line in p.lines for _ in line.events)]
    if not planes:
        planes = [p for p in data.planes if p.name.startswith("/host:CPU")]
    for plane in planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                if plane.name.startswith("/device:"):
                    yield plane.name, ev, stats
                elif "hlo_op" in stats and not _CONTROL.match(str(stats["hlo_op"])):
                    yield plane.name, ev, stats  # host thunks; control-flow thunks enclose their bodies


def _union_ns(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def profile_calls(call, hlo_text: str = "", calls: int = 3, top: int = 25, logdir: str | None = None) -> dict:
    """Trace ``calls`` invocations of ``call`` (which must block until done) and summarise the kernels.

    Returns {"calls", "wall_ms_per_call", "device_ms_per_call", "busy_fraction", "kernels_per_call",
    "by_category": {cat: ms per call}, "top": [{"ms", "share", "count", "kernel", "op_name"}]}: one row per
    kernel (a fusion, a library kernel, or an HLO instruction on the CPU).
    """
    from jax.profiler import ProfileData

    tmp = logdir or tempfile.mkdtemp(prefix="profile_ops_")
    try:
        jax.profiler.start_trace(tmp)
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        wall = time.perf_counter() - t0
        jax.profiler.stop_trace()
        files = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
        if not files:
            raise RuntimeError(f"the profiler wrote no trace under {tmp}")
        data = ProfileData.from_file(files[-1])
        names = hlo_op_names(hlo_text)
        by_kernel = {k.replace(".", "_").replace("-", "_"): v for k, v in names.items()}
        per_op = defaultdict(lambda: [0.0, 0, ""])
        intervals = defaultdict(list)
        for plane, ev, stats in _device_events(data):
            # Kernels inside an XLA command buffer (CUDA graph) all carry the buffer's hlo_op; the kernel's own
            # name (a fusion's name with "." -> "_", or a library kernel) is the finer key.
            op = str(stats.get("hlo_op", ""))
            key = ev.name if (not op or op.startswith("command_buffer")) else op
            dur = float(ev.duration_ns)
            rec = per_op[key]
            rec[0] += dur
            rec[1] += 1
            rec[2] = rec[2] or names.get(key) or by_kernel.get(ev.name.replace(".", "_"), "")
            intervals[plane].append((float(ev.start_ns), float(ev.start_ns) + dur))
    finally:
        if logdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    device_ns = sum(r[0] for r in per_op.values())
    busy_ns = max((_union_ns(v) for v in intervals.values()), default=0.0)
    by_cat = defaultdict(float)
    rows = []
    for kernel, (ns, count, op_name) in per_op.items():
        by_cat[category(op_name, kernel)] += ns
        rows.append({"ms": round(ns / calls / 1e6, 4), "share": round(ns / device_ns, 4) if device_ns else 0.0,
                     "count": round(count / calls, 2), "kernel": kernel[:100], "op_name": op_name})
    rows.sort(key=lambda r: -r["ms"])
    return {
        "calls": calls,
        "wall_ms_per_call": round(wall / calls * 1e3, 3),
        "device_ms_per_call": round(device_ns / calls / 1e6, 3),
        "busy_fraction": round(busy_ns / (wall * 1e9), 4) if wall else 0.0,
        "kernels_per_call": round(sum(r[1] for r in per_op.values()) / calls, 1),
        "by_category": {k: round(v / calls / 1e6, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "top": rows[:top],
    }


def format_report(report: dict, width: int = 110) -> str:
    """The report as a text table (for stderr / logs)."""
    lines = [f"wall {report['wall_ms_per_call']} ms/call, kernels {report['device_ms_per_call']} ms/call "
             f"(busy {report['busy_fraction']:.0%}), {report['kernels_per_call']} kernels/call",
             "by category (ms/call): " + ", ".join(f"{k} {v}" for k, v in report["by_category"].items())]
    for r in report["top"]:
        lines.append(f"{r['ms']:9.3f} ms {r['share']:6.1%} x{r['count']:<7} {r['kernel'][:34]:34} "
                     f"{r['op_name'][-(width - 62):]}")
    return "\n".join(lines)
