"""restore_folder / `oscfast restore-dir`: outputs, summary, resume, bad files, refusals."""
from __future__ import annotations

import csv
import sys
import json
from pathlib import Path

import numpy as np
import pytest

from oscfast import io, restore
from oscfast.cli import main
from oscfast.config import DIPConfig
from oscfast.folder import FolderSummary, restore_folder
from oscfast.models import DENOISE_SPEC
from oscfast.presets import PRESETS

from conftest import smooth_image

TINY = DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=8)
RUN = dict(config=TINY, device="cpu", progress=False)
NAMES = ["a.png", "b.png", "c.png"]


@pytest.fixture
def in_dir(tmp_path: Path) -> Path:
    """Three tiny noisy PNGs and one file with an image suffix that is no image."""
    folder = tmp_path / "in"
    for seed, name in enumerate(NAMES):
        clean = smooth_image(40, seed=seed)
        noisy = np.clip(clean + np.random.default_rng(seed).normal(0, 0.1, clean.shape), 0, 1)
        io.save_image(folder / name, noisy.astype(np.float32))
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image suffix: ignored")
    return folder


def summary_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as stream:
        return {row["file"]: row for row in csv.DictReader(stream)}


def test_restores_writes_summary_and_resumes(in_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out" / "nested"  # created
    summary = restore_folder(in_dir, out, "denoise", batch=2, **RUN)
    assert isinstance(summary, FolderSummary)
    assert (summary.restored, summary.skipped, summary.failed) == (3, 0, 1)
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES + ["summary.csv", "summary.json"])  # no temp files left
    for name in NAMES:
        assert io.load_image(out / name).shape == (40, 40, 3)

    rows = summary_rows(out)
    assert list(rows) == ["a.png", "b.png", "broken.jpg", "c.png"]  # sorted, one line per image
    assert rows["broken.jpg"]["status"].startswith("failed: unreadable")
    for name in NAMES:
        row = rows[name]
        assert row["status"] == "restored" and row["output"] == name
        assert 1 <= int(row["stop_iteration"]) <= int(row["iterations_run"]) <= 8
        assert row["rule"] == "risk" and row["probe"] == "twin"
        by_file = {r.file: r for r in summary.rows}[name]
        assert float(row["seconds"]) == pytest.approx(by_file.seconds) and 0 < by_file.seconds < 600
        # the noise level the rule used is the one restore() estimates for that file
        assert float(row["noise_level"]) == pytest.approx(restore(in_dir / name, "denoise", **RUN).noise_level)
    data = json.loads((out / "summary.json").read_text())
    assert data["counts"] == {"images": 4, "restored": 3, "skipped": 0, "failed": 1}
    assert [row["file"] for row in data["rows"]] == list(rows)

    # resume: one output removed; only that image is restored again, nothing else is touched
    times = {name: (out / name).stat().st_mtime_ns for name in NAMES}
    (out / "b.png").unlink()
    import oscfast.many

    calls: list[int] = []
    real = oscfast.many.restore_many

    def counting(images, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        images = list(images)
        calls.append(len(images))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(oscfast.many, "restore_many", counting)
    again = restore_folder(in_dir, out, "denoise", **RUN)
    assert calls == [1]  # only b.png went to restore_many
    assert (again.restored, again.skipped, again.failed) == (1, 2, 1)
    assert {n: (out / n).stat().st_mtime_ns for n in ("a.png", "c.png")} == {n: times[n] for n in ("a.png", "c.png")}
    rows = summary_rows(out)
    assert [rows[n]["status"] for n in NAMES] == ["skipped-existing", "restored", "skipped-existing"]

    calls.clear()
    third = restore_folder(in_dir, out, "denoise", **RUN)
    assert calls == [] and (third.restored, third.skipped) == (0, 3)


def test_a_bad_image_fails_alone_in_a_batch(tmp_path: Path) -> None:
    """An image too small for the network fails at restore time; the others of its batch are restored."""
    folder = tmp_path / "in"
    io.save_image(folder / "big.png", smooth_image(40, seed=1))
    io.save_image(folder / "small.png", smooth_image(16, seed=2))
    io.save_image(folder / "zbig.png", smooth_image(40, seed=3))
    summary = restore_folder(folder, tmp_path / "out", "denoise", batch=2, **RUN)
    status = {row.file: row.status for row in summary.rows}
    assert status["big.png"] == status["zbig.png"] == "restored"
    assert status["small.png"].startswith("failed: ") and "px" in status["small.png"]


def test_cli_exit_status_and_failed_list(in_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(PRESETS["denoise"], "f16", TINY)  # the CLI takes no config: keep its run tiny
    out = tmp_path / "out"
    code = main(["restore-dir", str(in_dir), "-o", str(out), "--max-iterations", "5", "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in captured.err and "Traceback" not in captured.err
    assert sorted(p.name for p in out.glob("*.png")) == NAMES
    assert all(int(row["iterations_run"]) <= 5 for name, row in summary_rows(out).items() if name in NAMES)

    (in_dir / "broken.jpg").unlink()
    assert main(["restore-dir", str(in_dir), "-o", str(out), "--device", "cpu", "--quiet"]) == 0  # all skipped

    # usage errors: one line, status 2, before any work
    for args, text in (
        ([str(in_dir), "-o", str(in_dir)], "refusing to overwrite"),
        ([str(in_dir), "-o", str(out), "--factor", "2"], "do not apply"),
        ([str(in_dir), "-o", str(out), "--preset", "nope"], "unknown preset"),
        ([str(in_dir), "-o", str(out), "--suffix", ".gif"], "unknown suffix"),
        ([str(tmp_path / "missing"), "-o", str(out)], "does not exist"),
    ):
        assert main(["restore-dir", *args, "--device", "cpu", "--quiet"]) == 2, args
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1, err


def test_refuses_output_equal_to_input_and_bad_output_folder(in_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import oscfast.many

    def no_work(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("work started")

    monkeypatch.setattr(oscfast.many, "restore_many", no_work)
    with pytest.raises(ValueError, match="its own input"):
        restore_folder(in_dir, in_dir, "denoise", **RUN)
    # another image's input: b.jpg -> b.png would overwrite the input b.png
    mixed = tmp_path / "mixed"
    io.save_image(mixed / "b.jpg", smooth_image(40))
    io.save_image(mixed / "b.png", smooth_image(40))
    with pytest.raises(ValueError, match="the input 'b.png'"):
        restore_folder(mixed, mixed, "denoise", **RUN)
    other = tmp_path / "other"
    with pytest.raises(ValueError, match="would both be restored into 'b.png'"):
        restore_folder(mixed, other, "denoise", **RUN)

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for bad in (blocker, blocker / "out"):
        with pytest.raises(ValueError, match="not a folder|not writable"):
            restore_folder(in_dir, bad, "denoise", **RUN)
    with pytest.raises(ValueError, match="unknown suffix"):
        restore_folder(in_dir, tmp_path / "out", "denoise", suffix=".gif", **RUN)
    with pytest.raises(ValueError, match="backend"):
        restore_folder(in_dir, tmp_path / "out", "denoise", backend="spark", **RUN)
    assert not (tmp_path / "out").exists() and not other.exists()


def test_ray_backend_without_ray_names_the_extra(in_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'oscfast\[ray\]'"):
        restore_folder(in_dir, tmp_path / "out", "denoise", backend="ray", **RUN)
    assert main(["restore-dir", str(in_dir), "-o", str(tmp_path / "out"), "--ray", "local", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'oscfast[ray]'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_summary_names_each_images_noise_model(tmp_path: Path) -> None:
    """noise="auto" picks a model per image: the summary says which, with its parameter."""
    from oscfast import degrade

    folder = tmp_path / "in"
    clean = smooth_image(48, seed=4)
    io.save_image(folder / "pepper.png", degrade(clean, "denoise", noise="impulse", severity=3, seed=1))
    io.save_image(folder / "grain.png", degrade(clean, "denoise", sigma=0.1, seed=1))
    out = tmp_path / "out"
    summary = restore_folder(folder, out, "denoise", noise="auto", **RUN)
    rows = summary_rows(out)
    assert rows["pepper.png"]["noise_model"] == "impulse"
    assert float(rows["pepper.png"]["noise_parameter"]) == pytest.approx(0.5, abs=0.05)  # the share replaced
    assert rows["grain.png"]["noise_model"] == "gaussian"
    assert {r.file: r.noise_model for r in summary.rows} == {"grain.png": "gaussian", "pepper.png": "impulse"}
