"""Per-chip HBM of the paper-scale train steps on TPU pod slices, compiled ahead of time on this host.

    python scripts/tpu_memory_table.py [--out=docs/bench_data/tpu_memory] [--slices=v5e-16,v5p-32] [--methods=lora]

Every cell runs ``python -m remix_jax.compile`` in its own process (needs libtpu, no TPU; see docs/multihost.md)
for the Llama-3-8B shape (``random:llama3-8b``, bfloat16 base and compute, remat ``save_proj_out``, attention
``auto`` = splash) with configs/gsm8k.py's method variants: LoRA (rank 16) and ReMix (n=8, k=2, r=8) with M=4 and
M=8 routing samples. Batch: one sequence of 2048 tokens per chip (global batch = number of chips), no gradient
accumulation. Mesh: pure FSDP over the slice (data=1, fsdp=all chips, tensor=1): the frozen base, the adapters and
their optimizer state are split over every chip, and so are the batch rows.

Writes OUT.jsonl (one report per cell, as ``--json_out`` writes it, plus the command) and OUT.md (the table).
Each cell takes one core for one to ~40 minutes (programs that fit took longest) and 1-3 GiB of host memory:
``--jobs`` runs several at once;
``--render=A.jsonl,B.TOPOLOGY.METHOD.json`` writes OUT.jsonl / OUT.md from the cells of earlier (partial) runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICES = ("v5e-16", "v5e-64", "v5e-256", "v5p-32", "v5p-128", "v6e-64")
METHODS = {"lora": ("lora", 1), "remix_m4": ("remix", 4), "remix_m8": ("remix", 8)}
SEQ = 2048
GIB = 2 ** 30


def chips(topology: str) -> int:
    from remix_jax.parallel.topology import parse_topology

    return parse_topology(topology).chips


def command(topology: str, method: str, json_out: str) -> list[str]:
    variant, m = METHODS[method]
    return [sys.executable, "-m", "remix_jax.compile", f"--config=configs/gsm8k.py:{variant}",
            f"--topology={topology}", "--config.model.path=random:llama3-8b", "--config.model.remat=save_proj_out",
            f"--config.data.batch_size={chips(topology)}", f"--config.data.max_length={SEQ}",
            f"--config.train.num_samples={m}", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
            f"--json_out={json_out}"]


def run_cell(topology: str, method: str, json_out: str) -> dict:
    if os.path.exists(json_out):
        os.remove(json_out)
    cmd = command(topology, method, json_out)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
                               "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})  # compile-only processes side by side
    wall = time.perf_counter() - t0
    shown = " ".join(["python"] + cmd[1:-1])
    if proc.returncode not in (0, 1) or not os.path.exists(json_out):
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{shown}: exit {proc.returncode}\n{tail}")
    with open(json_out) as f:
        report = json.loads(f.read())
    os.remove(json_out)
    report.update(cell_method=method, command=shown, wall_s=wall)
    return report


def cell_text(r: dict) -> str:
    cap = r["hbm_capacity_bytes"] / GIB
    if "memory" in r:
        used = r["memory"]["total"] / GIB
        return f"{used:.1f} / {cap:.0f} GiB, {'fits' if r['fits'] else '**does not fit**'}"
    o = r["compiler_oom"]
    need = f"{o['used_bytes'] / GIB:.1f}" if o.get("used_bytes") else "?"
    usable = o["limit_bytes"] / GIB if o.get("limit_bytes") else cap
    return f"temporaries {need} GiB > {usable:.2f} usable, **does not fit**"


def table(reports: list[dict]) -> str:
    by = {(r["topology"], r["cell_method"]): r for r in reports}
    slices = [s for s in SLICES if any(k[0] == s for k in by)]
    head = "| configuration | " + " | ".join(f"{s} ({chips(s)} chips)" for s in slices) + " |"
    lines = [head, "|" + "---|" * (len(slices) + 1)]
    names = {"lora": "LoRA r=16", "remix_m4": "ReMix n=8 k=2 r=8, M=4", "remix_m8": "ReMix n=8 k=2 r=8, M=8"}
    for m in METHODS:
        if not any(k[1] == m for k in by):
            continue
        cells = [cell_text(by[(s, m)]) if (s, m) in by else "-" for s in slices]
        lines.append(f"| Llama-3-8B, {names[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_reports(path: str) -> list[dict]:
    """The cells of OUT.jsonl, or the one cell of an OUT.TOPOLOGY.METHOD.json that remix_jax.compile wrote for a
    run stopped before it collected it (its command is rebuilt)."""
    with open(path) as f:
        reports = [json.loads(line) for line in f if line.strip()]
    for r in reports:
        if "cell_method" not in r:
            topology, method = path.rsplit(".", 3)[1:3]
            assert topology == r["topology"], path
            r.update(cell_method=method, command=" ".join(["python"] + command(topology, method, "")[1:-1]))
    return reports


def write(out: str, reports: list[dict]) -> None:
    """OUT.jsonl: the reports in full (shardings included), one line per cell; OUT.md: the table."""
    with open(out + ".jsonl", "w") as f:
        for r in reports:
            f.write(json.dumps(r) + "\n")
    with open(out + ".md", "w") as f:
        f.write(table(reports) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "bench_data", "tpu_memory"))
    p.add_argument("--slices", default=",".join(SLICES))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--jobs", type=int, default=1, help="cells compiled at once (each takes one core, ~1 GiB)")
    p.add_argument("--render", default="", help="comma-separated .jsonl files of earlier runs: write OUT.jsonl and "
                   "OUT.md from their cells instead of compiling")
    a = p.parse_args()
    sys.path.insert(0, ROOT)
    if a.render:
        cells = {(r["topology"], r["cell_method"]): r for path in a.render.split(",") for r in read_reports(path)}
        reports = list(cells.values())  # a cell given twice: the later file's
        order = {(t, m): i for i, (m, t) in enumerate((m, t) for m in METHODS for t in SLICES)}
        reports.sort(key=lambda r: order.get((r["topology"], r["cell_method"]), len(order)))
        write(a.out, reports)
        print(table(reports))
        return
    cells = [(t, m) for m in a.methods.split(",") for t in a.slices.split(",")]

    done: dict[tuple[str, str], dict] = {}
    lock = threading.Lock()

    def one(cell):
        topology, method = cell
        r = run_cell(topology, method, f"{a.out}.{topology}.{method}.json")
        print(f"{topology:<9} {method:<9} {cell_text(r)} (compiled in {r['compile_s']:.0f} s)", flush=True)
        with lock:  # rewrite both files after every cell, in the cells' order
            done[cell] = r
            write(a.out, [done[c] for c in cells if c in done])

    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        list(pool.map(one, cells))
    print(table([done[c] for c in cells]))


if __name__ == "__main__":
    main()
