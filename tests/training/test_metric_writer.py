"""remix_jax.training.metrics.MetricWriter: JSON lines and TensorBoard events, and tensorboardX imported without
torch (tensorboardX imports torch when it is installed, which costs every run's start-up over a second)."""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorboardX")

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from remix_jax.training.metrics import MetricWriter
    w = MetricWriter(sys.argv[1])
    w.write(1, {"loss": 2.5, "per_block": [0.5, 1.5]})
    w.close()
    torch_after_writer = "torch" in sys.modules
    try:
        import torch  # noqa: F401  (still importable afterwards)
        torch_importable = True
    except ImportError:
        torch_importable = False
    events = os.listdir(os.path.join(sys.argv[1], "tensorboard"))
    print(json.dumps({"torch_after_writer": torch_after_writer, "torch_importable": torch_importable,
                      "events": events}))
""")


def test_writer_logs_without_importing_torch(tmp_path):
    has_torch = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["torch_after_writer"] is False
    assert r["torch_importable"] is has_torch
    assert len(r["events"]) == 1 and r["events"][0].startswith("events.out.tfevents")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 2.5, "per_block": [0.5, 1.5]}]
