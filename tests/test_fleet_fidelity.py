"""The fleet model against a small real run: benchmarks/fleet_fidelity.py end to end (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from splitserve.simulator.traces import make_trace, save_trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_model_and_real_run_agree_on_a_small_fleet_with_a_server_killed(tmp_path) -> None:
    # 4 s of a good link, 4 s of one too slow for any width in time, over again: misses both sides can see
    save_trace(make_trace([(4.0, 8e6), (4.0, 0.05e6)]), tmp_path / "steps.up")
    out = tmp_path / "fidelity.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fleet_fidelity.py"), "--model", "fmnist-split",
           "--devices", "2", "--seconds", "16", "--kill-at", "8", "--warmup", "30",
           "--traces", str(tmp_path / "steps.up"), "--keep", str(tmp_path / "run"), "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    real, model = result["real"]["all"], result["model_measured_inputs"]["all"]
    assert real["frames"] == 2 * 16 * 10 and abs(model["frames"] - real["frames"]) <= 2
    assert abs(real["miss"] - model["miss"]) < 0.1, (real, model)
    assert result["server_down_s"] > 0.5  # the server really was killed and restarted
    # the kept run models again to the same numbers
    again = tmp_path / "again.json"
    replay = [sys.executable, str(ROOT / "benchmarks" / "fleet_fidelity.py"), "--model", "fmnist-split",
              "--replay", str(tmp_path / "run"), "--traces", str(tmp_path / "steps.up"),
              "--json", str(again)]  # fmt: skip
    assert subprocess.run(replay, capture_output=True, text=True, timeout=300).returncode == 0
    assert json.loads(again.read_text())["model_measured_inputs"] == result["model_measured_inputs"]
