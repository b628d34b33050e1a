"""oscfast evaluate: any folder of clean images, the same report as bench/paper.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oscfast import restore
from oscfast.cli import main
from oscfast.config import DIPConfig, StopConfig
from oscfast.evaluation.harness import Degradation, evaluate_folder, make_observation
from oscfast.models import DENOISE_SPEC

from conftest import smooth_image

CONFIG = DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=40)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "clean"
    images.mkdir()
    for seed in range(3):
        Image.fromarray((smooth_image(64, seed=seed) * 255).round().astype(np.uint8)).save(images / f"photo{seed}.png")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    return images


def test_report_matches_direct_restore_and_resumes(folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "out" / "report.md"
    degradation = Degradation(task="denoise", options={"sigma": 25 / 255}, size=64)
    evaluate_folder(folder, report, degradation, config=CONFIG, device="cpu", progress=False)
    text = report.read_text()
    assert text.count("| photo") == 3 and "broken.png" in text and "## Summary per rule" in text
    runs = sorted((tmp_path / "out" / "report_runs").glob("*.json"))
    assert [p.stem for p in runs] == ["photo0-s0", "photo1-s0", "photo2-s0"]
    assert len(list((tmp_path / "out" / "report_figures").glob("*.png"))) == 3
    # the number the report gives for the default rule is what restore() returns for that image
    payload = json.loads(runs[1].read_text())
    clean = np.asarray(Image.open(folder / "photo1.png"), dtype=np.float32) / 255
    observation, clean, _ = make_observation(clean, degradation, seed=0)
    direct = restore(observation, reference=clean, config=CONFIG, stop_config=StopConfig(), device="cpu", progress=False)
    default = payload["decisions"][payload["labels"].index("default")]
    assert payload["returned_psnr"] == pytest.approx(direct.psnr, abs=1e-9)
    assert default["iteration"] == direct.stop_iteration
    assert f"{direct.psnr:.2f} ({direct.stop_iteration}, {direct.output})" in text
    # a rerun resumes: finished images are not run again
    before = {p: p.stat().st_mtime_ns for p in runs}
    evaluate_folder(folder, report, degradation, config=CONFIG, device="cpu", progress=False)
    assert {p: p.stat().st_mtime_ns for p in runs} == before


def test_evaluate_errors(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        evaluate_folder(empty, tmp_path / "r.md", Degradation(), config=CONFIG, device="cpu", progress=False)
    assert main(["evaluate", str(empty), "-o", str(tmp_path / "r.md"), "--device", "cpu", "--quiet"]) == 2
    assert "holds no image" in capsys.readouterr().err
    assert main(["evaluate", str(empty), "-o", str(tmp_path / "r.txt"), "--device", "cpu", "--quiet"]) == 2
    assert "ending in .md" in capsys.readouterr().err


def test_evaluate_cli_on_super_resolution(folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "sr.md"
    code = main(["evaluate", str(folder), "-o", str(report), "--task", "super_resolution", "--factor", "2",
                 "--size", "64", "--max-iterations", "10", "--width-scale", "0.125", "--device", "cpu", "--quiet"])
    assert code == 0
    text = report.read_text()
    assert "Y-PSNR" in text and text.count("| photo") == 3
