"""`bench/device_check.py --smoke`: every step of the GPU check, on CPU at tiny scale, so the
command that will first run on a GPU cannot rot in between."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from paths import REPO_DIR

STEPS = ("launches per decode step", "split-KV attention", "norm, rotary + append, SiLU", "uniforms kernel",
         "model step", "decode graphs captured", "graph steps vs eager steps", "among 7 neighbours", "30 s clone",
         "server smoke", "first audio over HTTP", "arrivals")


def test_the_device_checks_smoke_run_passes_every_step(tmp_path):
    run = subprocess.run([sys.executable, str(REPO_DIR / "bench" / "device_check.py"), "--smoke", "--out", str(tmp_path)],
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    table = (tmp_path / "device_check.md").read_text()
    assert "| FAIL |" not in table and all(step in table for step in STEPS), table
    launches = int(re.search(r"^launches per decode step: (\d+)$", run.stdout, re.MULTILINE).group(1))
    assert launches <= 1000
