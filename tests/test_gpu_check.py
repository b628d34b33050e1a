"""bench/gpu_check.sh's dry run (any machine): its stages, their estimates, the 8-minute limit."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(*args: str, cwd: Path = Path("/")) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_dry_run_lists_every_stage_within_eight_minutes(tmp_path: Path) -> None:
    done = run("--dry-run", cwd=tmp_path)  # from anywhere: it finds the repository itself
    assert done.returncode == 0, done.stderr
    stages = dict(re.findall(r"^  (\w[\w-]*)\s+(\d+) s", done.stdout, flags=re.M))
    total = int(stages.pop("total"))
    assert list(stages) == ["install", "tests", "throughput", "precision", "paper"]
    assert sum(int(v) for v in stages.values()) == total <= 480
    assert "pytest -m gpu" in done.stdout and "512" in done.stdout and "--scale full" in done.stdout
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_unknown_stage_or_option_fails() -> None:
    assert run("--dry-run", "warp").returncode == 2
    assert run("--fast").returncode == 2


def test_a_selection_of_stages_is_estimated_alone() -> None:
    done = run("--dry-run", "tests", "precision")
    assert done.returncode == 0
    assert re.search(r"^  total\s+140 s", done.stdout, flags=re.M), done.stdout
