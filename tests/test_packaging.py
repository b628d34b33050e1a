"""The design card's top-level folders install inside the oscfast namespace only."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    if run.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {run.stderr.strip()[-200:]}")
    return next(out.glob("oscfast-*.whl"))


def test_wheel_maps_models_and_kernels_into_oscfast(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "oscfast/models/__init__.py" in names and "oscfast/kernels/__init__.py" in names
    assert "oscfast/py.typed" in names
    # every subpackage of the source tree is in the wheel (a regular install has all of oscfast)
    source = Path(__file__).resolve().parents[1] / "oscfast"
    for init in source.rglob("__init__.py"):
        assert f"oscfast/{init.relative_to(source).as_posix()}" in names, init
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"oscfast"}  # no generic 'models' or 'kernels' in site-packages


def test_regular_install_imports(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)  # a wheel is installed by unpacking it
    code = (
        "import oscfast.models, oscfast.kernels, oscfast.api, oscfast.evaluation.harness, oscfast.engine.loop, sys;"
        "assert oscfast.models.__file__.startswith(sys.argv[1]), oscfast.models.__file__;"
        "assert 'models' not in sys.modules and 'kernels' not in sys.modules"
    )
    run = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_editable_or_current_install_imports_from_this_repo() -> None:
    import oscfast.kernels
    import oscfast.models

    assert Path(oscfast.models.__file__).resolve().parent == REPO / "models"
    assert Path(oscfast.kernels.__file__).resolve().parent == REPO / "kernels"


def test_readme_results_match_the_result_files() -> None:
    """The README's measured results are generated from bench/results/ (bench/readme.py):
    a number typed into a generated block, or a result file changed without regenerating,
    fails here."""
    check = subprocess.run([sys.executable, str(REPO / "bench" / "readme.py"), "--check"],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
