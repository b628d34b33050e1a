"""The package's shape: no import cycle, one preparation path that every entry point takes,
and a task registry that is the only list of tasks."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oscfast
from oscfast import folder, many
from oscfast.api import restore
from dataclasses import replace

from oscfast.config import DIPConfig, StopConfig
from oscfast.models import DENOISE_SPEC
from oscfast.prepare import RUN_OPTION_NAMES
from oscfast.presets import get_preset
from oscfast.tasks import TASKS

from conftest import smooth_image

PACKAGE = Path(oscfast.__file__).resolve().parent


#: folders of the repository and the package names they are installed as (pyproject.toml)
ROOTS = {PACKAGE: "oscfast", PACKAGE.parent / "models": "oscfast.models", PACKAGE.parent / "kernels": "oscfast.kernels"}


def _module_name(path: Path, root: Path) -> str:
    parts = [ROOTS[root], *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the oscfast modules it imports anywhere (top level, in functions, and under
    TYPE_CHECKING alike): a type-only import is a dependency too."""
    files = {_module_name(path, root): path for root in ROOTS for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # "from oscfast import io" names the module oscfast.io, not the package
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("oscfast"):
                    graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state and (found := visit(child)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package_type_only_imports_included() -> None:
    graph = _import_graph()
    assert "oscfast.prepare" in graph["oscfast.api"]  # the graph sees real edges
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lower_layers_do_not_import_higher_ones() -> None:
    graph = _import_graph()
    for low in ("oscfast.checks", "oscfast.cluster", "oscfast.plotting"):
        assert not {m for m in graph[low] if m.startswith("oscfast.") and m != "oscfast.memory"}, (low, graph[low])
    assert not graph["oscfast.export.generator"] & {"oscfast.api", "oscfast.result"}


def test_restore_is_short() -> None:
    lines, _ = inspect.getsourcelines(restore)
    assert len(lines) < 100, len(lines)


def test_the_registry_is_the_one_list_of_tasks() -> None:
    from oscfast import plan, presets

    assert tuple(oscfast.TASKS) == ("denoise", "jpeg", "super_resolution", "inpaint", "restore_pixels", "deblur", "custom")
    assert set(presets.PRESETS) == set(TASKS)
    for name, cls in TASKS.items():
        assert cls.name == name
        assert presets.default_preset(name) in presets.PRESETS[name]
        assert plan.default_stop(name) == cls.default_stop
    names = [line for line in (PACKAGE / "folder.py").read_text().splitlines() if '"restore_pixels"' in line]
    assert not names, "folder.py must not list tasks"


def test_restore_many_takes_every_run_option_of_restore() -> None:
    params = inspect.signature(restore).parameters
    assert set(RUN_OPTION_NAMES) <= set(params)
    assert {name for name, p in params.items() if p.kind is p.KEYWORD_ONLY} - {
        "reference", "callback", "cancel", "checkpoint", "checkpoint_every", "resume"} == set(RUN_OPTION_NAMES)
    image = smooth_image(64)
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.1, image.shape), 0, 1).astype(np.float32)
    config = DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=12)
    # every option away from its default, each with an effect the results show
    options = dict(stop="never", max_iterations=10, preset=None, net=None, seed=3, device="cpu", precision="bf16",
                   progress=False, probe="inline", pseudo_noise_std=0.05, rule="risk", noise_level=0.1, output="raw",
                   config=config, stop_config=StopConfig(sync_every=4))
    single = restore(noisy, "denoise", **options)
    (batched,) = many.restore_many([noisy], "denoise", **options)
    for result in (single, batched):
        assert result.iterations_run == 10 and result.output == "raw" and result.seed == 3  # stop, cap, output, seed
        assert (result.probe, result.rule) == ("inline", "risk") and result.noise_level == pytest.approx(0.1)
        assert result.stop_config.pseudo_noise_std == 0.05 and result.stop_config.sync_every == 4
        assert result.engine_options.precision == "bf16" and result.config == replace(config, max_iterations=10)
    np.testing.assert_array_equal(single.image, batched.image)
    # preset and net, without a config: the JPEG task's second preset with the U-Net swapped in
    options = dict(max_iterations=2, preset="f16", net="unet", device="cpu", progress=False)
    single = restore(noisy, "jpeg", **options)
    (batched,) = many.restore_many([noisy], "jpeg", **options)
    assert single.config == batched.config and batched.config.net.kind == "unet"
    assert batched.config.learning_rate == get_preset("jpeg", "f16").learning_rate
    np.testing.assert_array_equal(single.image, batched.image)


@pytest.fixture
def jpeg_file(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "photo.jpg"
    path.parent.mkdir()
    Image.fromarray((smooth_image(64) * 255).round().astype(np.uint8)).save(path, quality=20)
    return path


def test_every_entry_point_reads_a_jpeg_files_tables(jpeg_file: Path, tmp_path: Path) -> None:
    options = dict(max_iterations=30, config=DIPConfig(net=DENOISE_SPEC.scaled(0.125), max_iterations=30),
                   seed=0, device="cpu", progress=False)
    single = restore(jpeg_file, "jpeg", **options)
    array = oscfast.load_image(jpeg_file)
    blind = restore(array, "jpeg", **options)  # no tables: Donoho's estimate, far lower
    assert single.noise_level > 1.5 * blind.noise_level  # the test can tell the two apart
    (batched,) = many.restore_many([jpeg_file], "jpeg", **options)
    summary = folder.restore_folder(jpeg_file.parent, tmp_path / "out", "jpeg", **options)
    row = folder.restore_file(str(jpeg_file), str(tmp_path / "ray" / "photo.png"), "jpeg", options)  # the Ray task's body
    ray_many = many._restore_one(0, jpeg_file, None, "jpeg", options)  # restore_many(backend="ray")'s body
    for level, stop in ((batched.noise_level, batched.stop_iteration),
                        (summary.rows[0].noise_level, summary.rows[0].stop_iteration),
                        (row["noise_level"], row["stop_iteration"]),
                        (ray_many.noise_level, ray_many.stop_iteration)):
        assert level == pytest.approx(single.noise_level, rel=1e-9)
        assert stop == single.stop_iteration
