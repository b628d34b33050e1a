"""Restore every image of a folder into another folder, resumably.

:func:`restore_folder` lists the images of a folder (not its subfolders), skips those whose
output already exists, restores the others (locally with :func:`oscfast.restore_many`, or one
Ray task per image with ``backend="ray"``, see :mod:`oscfast.cluster`) and writes each output
atomically as soon as it is done, so that an interrupted run loses only the images in flight and
a rerun of the same command resumes where it stopped. It ends with a summary, ``summary.csv``
and ``summary.json`` in the output folder (also written atomically), one row per image.

Example:
    >>> from oscfast.folder import restore_folder
    >>> summary = restore_folder("noisy/", "restored/", "denoise")  # doctest: +SKIP
    >>> summary.restored, summary.skipped, summary.failed  # doctest: +SKIP
    (12, 0, 0)
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from oscfast import io
from oscfast.files import write_text_atomic

__all__ = ["IMAGE_SUFFIXES", "FolderRow", "FolderSummary", "list_images", "restore_folder"]

logger = logging.getLogger(__name__)

#: the file suffixes (lower case) taken as images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: the summary files written into the output folder
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"

RESTORED = "restored"
SKIPPED = "skipped-existing"
FAILED = "failed"

#: options of :func:`oscfast.restore` that :func:`restore_folder` passes on (besides the task's own)
RUN_OPTIONS = frozenset({"seed", "max_iterations", "preset", "device", "precision", "config", "stop_config"})
#: options that change the stop configuration (as :func:`oscfast.restore` applies them)
STOP_OPTIONS = frozenset({"probe", "rule", "pseudo_noise_std", "noise_level"})
#: task options that make sense for a whole folder (the same for every image)
FOLDER_TASK_OPTIONS = frozenset({"factor", "keep", "keep_known", "blur_sigma", "kernel", "mask", "mask_threshold"})

#: a local run gives restore_many this many images at a time (times the batch): it prepares
#: (loads, plans) a whole list before running it, so a long folder is cut into chunks
CHUNK_PER_SLOT = 4
MIN_CHUNK = 16


@dataclass
class FolderRow:
    """One image of a :func:`restore_folder` run.

    Attributes:
        file: the input file's name (inside the input folder).
        output: the output file's name (inside the output folder).
        status: ``"restored"``, ``"skipped-existing"`` or ``"failed: <reason>"``.
        stop_iteration, rule, probe, iterations_run, seconds: of the restoration (None unless
            restored).
    """

    file: str
    output: str
    status: str
    stop_iteration: int | None = None
    rule: str | None = None
    probe: str | None = None
    iterations_run: int | None = None
    seconds: float | None = None

    @property
    def failed(self) -> bool:
        return self.status.startswith(FAILED)


@dataclass
class FolderSummary:
    """What :func:`restore_folder` did: one row per image, in file-name order, and counts."""

    in_dir: Path
    out_dir: Path
    rows: list[FolderRow] = field(default_factory=list)

    @property
    def restored(self) -> int:
        return sum(row.status == RESTORED for row in self.rows)

    @property
    def skipped(self) -> int:
        return sum(row.status == SKIPPED for row in self.rows)

    @property
    def failed(self) -> int:
        return sum(row.failed for row in self.rows)

    @property
    def failed_rows(self) -> list[FolderRow]:
        return [row for row in self.rows if row.failed]

    @property
    def ok(self) -> bool:
        """True when every image was restored or skipped as existing."""
        return self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_dir": str(self.in_dir),
            "out_dir": str(self.out_dir),
            "counts": {"images": len(self.rows), "restored": self.restored, "skipped": self.skipped, "failed": self.failed},
            "rows": [asdict(row) for row in self.rows],
        }


@dataclass
class _Item:
    """An image to restore: its row, and where it comes from and goes to (absolute paths)."""

    row: FolderRow
    source: Path
    target: Path


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files of ``folder`` (not its subfolders), sorted by name; hidden files (such as
    the temporary files of an atomic write) are left out."""
    folder = Path(folder)
    return sorted(
        path for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def restore_folder(
    in_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    task: str = "denoise",
    *,
    batch: int | None = None,
    suffix: str = ".png",
    backend: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
    **restore_options: Any,
) -> FolderSummary:
    """Restore the images of ``in_dir`` into ``out_dir``, skipping those already done.

    The output of ``in_dir/NAME.EXT`` is ``out_dir/NAME<suffix>``. Everything that can be
    checked is checked before any work: the folders (the output folder is created, and a test
    file written into it and removed), the suffix, the options, and that no output would
    overwrite an input (the same folder with the same suffix) or another image's output
    (``a.png`` and ``a.jpg`` with one suffix).

    Args:
        in_dir: the folder of damaged images (.png .jpg .jpeg .tif .tiff .bmp; not recursive).
        out_dir: where the restored images and the summary go (created if needed). For
            ``backend="ray"`` on a cluster, both folders must be seen at the same paths by every
            node (a shared file system).
        task: the task name (one for all images; not ``"custom"``).
        batch: local backend: restorations per batched step (None: from free memory, 1 on a
            CPU); see :func:`oscfast.restore_many`. Ignored by the Ray backend.
        suffix: the outputs' suffix, which chooses their format (``.png``, ``.tif``, ...).
        backend: ``"local"`` (this process) or ``"ray"`` (one Ray task per image; needs
            ``pip install 'oscfast[ray]'``).
        ray_address: ``backend="ray"``: ``"local"`` or None starts a local Ray and stops it
            afterwards, an address (``"ray://host:10001"``, ``"auto"``) connects to a cluster;
            an already initialised Ray is used as it is.
        progress: show a progress bar over the images.
        restore_options: as :func:`oscfast.restore`, the same for every image: ``seed``,
            ``max_iterations``, ``preset``, ``device``, ``precision``, ``config``,
            ``stop_config``, ``probe``, ``rule``, ``pseudo_noise_std``, ``noise_level`` and the
            task's options (``factor``, ``keep``, ``keep_known``, ``blur_sigma``, ``kernel``,
            ``mask``, ``mask_threshold``).

    Returns:
        A :class:`FolderSummary` (also written to ``summary.csv`` and ``summary.json``).
        Images that could not be read or restored are rows with status ``"failed: ..."``
        (and a logged warning); they do not stop the others.

    Raises:
        ValueError: a bad folder, suffix, backend or option, or an output that would overwrite
            an input, before any image is restored.
        ImportError: ``backend="ray"`` without Ray installed.
    """
    in_path, out_path = Path(in_dir).expanduser(), Path(out_dir).expanduser()
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}; expected 'local' or 'ray'")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    options = _check_options(task, restore_options, local=backend == "local")
    if not in_path.is_dir():
        raise ValueError(f"input folder '{in_path}' does not exist or is not a folder")
    if backend == "ray":
        from oscfast import cluster

        cluster.import_ray()  # a clear ImportError now, before any folder is made
    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    if out_path.exists() and not out_path.is_dir():
        raise ValueError(f"output folder '{out_path}' is a file, not a folder")
    io.check_save_path(out_path / f"image{suffix}")  # a known suffix, and a writable folder
    in_path, out_path = in_path.resolve(), out_path.resolve()
    items = _plan_items(list_images(in_path), out_path, suffix)
    _check_writable(out_path)
    summary = FolderSummary(in_path, out_path)
    summary.rows = [item.row for item in items]
    pending = [item for item in items if not item.row.failed and item.row.status != SKIPPED]
    if not items:
        logger.warning("no image files (%s) in '%s'", " ".join(IMAGE_SUFFIXES), in_path)

    if backend == "ray":
        runner: Callable[..., None] = cluster.run_ray
        extra: dict[str, Any] = {"address": ray_address}
    else:
        runner, extra = _run_local, {"batch": batch}
    bar = _progress_bar(len(pending), progress)
    try:
        runner(pending, task, options, bar=bar, **extra)
    finally:
        bar.close()
        for item in pending:
            if item.row.status == "":
                item.row.status = f"{FAILED}: not run (interrupted)"
        _write_summary(summary)
    return summary


# ------------------------------------------------------------------------------------------
# checks before any work
# ------------------------------------------------------------------------------------------


def _check_options(task: str, given: dict[str, Any], *, local: bool = True) -> dict[str, Any]:
    """Check the option names (and those values that do not depend on an image); returns the
    options as :func:`oscfast.restore_many` takes them (stop options folded into
    ``stop_config``). The device is checked here when the run is ``local``, on the workers
    otherwise (a driver without a GPU may send work to GPU workers)."""
    from oscfast.api import resolve_device
    from oscfast.config import DIPConfig, StopConfig
    from oscfast.presets import get_preset
    from oscfast.tasks import TASK_OPTIONS

    if task == "custom" or task not in TASK_OPTIONS:
        valid = [name for name in TASK_OPTIONS if name != "custom"]
        raise ValueError(f"unknown task {task!r} for a folder; expected one of {valid}")
    if "progress" in given:
        raise ValueError("progress= is restore_folder's own option (a bar over the images)")
    task_keys = FOLDER_TASK_OPTIONS & TASK_OPTIONS[task]
    unknown = {key for key, value in given.items() if value is not None} - RUN_OPTIONS - STOP_OPTIONS - task_keys
    if unknown:
        raise ValueError(
            f"option(s) {sorted(unknown)} do not apply to a folder of task {task!r}; valid: "
            f"{sorted(RUN_OPTIONS | STOP_OPTIONS | task_keys)}"
        )
    options = {key: value for key, value in given.items() if value is not None and key not in STOP_OPTIONS}
    if options.get("config") is not None and not isinstance(options["config"], DIPConfig):
        raise TypeError(f"config must be a DIPConfig, got {type(options['config']).__name__}")
    stop = options.get("stop_config") or StopConfig()
    if not isinstance(stop, StopConfig):
        raise TypeError(f"stop_config must be a StopConfig, got {type(stop).__name__}")
    changes = {key: given[key] for key in STOP_OPTIONS if given.get(key) is not None}
    if changes:
        options["stop_config"] = replace(stop, **changes)
    max_iterations = options.get("max_iterations")
    if max_iterations is not None and (isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1):
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
    if options.get("config") is None:
        get_preset(task, options.get("preset"), factor=options.get("factor"))  # names a bad preset
    seed = options.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    device = options.get("device", "auto")
    if not isinstance(device, str):
        device = str(device)
    if local:
        resolve_device(device)
    elif device != "auto" and device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    options["device"] = device
    if options.get("precision", "fp32") not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {options['precision']!r}; expected 'fp32' or 'bf16'")
    return options


def _check_writable(out_path: Path) -> None:
    """Create the output folder and check, by writing a file into it, that it takes files."""
    try:
        out_path.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".oscfast-write-test.", dir=out_path)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise ValueError(f"output folder '{out_path}' is not writable: {error.strerror or error}") from None


def _plan_items(images: Sequence[Path], out_path: Path, suffix: str) -> list[_Item]:
    """One item per image; refuses an output that is an input or another image's output."""
    inputs = {path.resolve(): path for path in images}
    owners: dict[Path, Path] = {}
    items = []
    for path in images:
        target = (out_path / f"{path.stem}{suffix}").resolve()
        if target in inputs:
            what = "its own input" if target == path.resolve() else f"the input '{inputs[target].name}'"
            raise ValueError(
                f"the output of '{path.name}' would be '{target}', which is {what}: refusing to overwrite "
                "inputs; choose another output folder (or another --suffix)"
            )
        if target in owners:
            raise ValueError(
                f"'{owners[target].name}' and '{path.name}' would both be restored into '{target.name}'; "
                "rename one of them or restore them into separate folders"
            )
        owners[target] = path
        status = SKIPPED if target.is_file() else ""
        items.append(_Item(FolderRow(path.name, target.name, status), path.resolve(), target))
    return items


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="images", unit="image", disable=not enabled or total == 0, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------
# local backend
# ------------------------------------------------------------------------------------------


def _run_local(items: Sequence[_Item], task: str, options: dict[str, Any], *, bar: Any, batch: int | None) -> None:
    """Restore ``items`` with restore_many, a chunk at a time, saving each result as it comes."""
    size = max(MIN_CHUNK, CHUNK_PER_SLOT * (batch or 1))
    for start in range(0, len(items), size):
        _run_chunk(items[start:start + size], task, options, bar, batch)


def _run_chunk(items: Sequence[_Item], task: str, options: dict[str, Any], bar: Any, batch: int | None) -> None:
    from oscfast.many import restore_many

    loaded: list[tuple[_Item, Any]] = []
    for item in items:
        try:
            loaded.append((item, io.load_image(item.source)))
        except (ValueError, TypeError, OSError) as error:
            _fail(item, f"unreadable: {error}", bar)

    def run(group: list[tuple[_Item, Any]]) -> None:
        def on_group_result(index: int, result: Any) -> None:
            _save(group[index][0], result, bar)

        restore_many([image for _, image in group], task, batch=batch, progress=False, on_result=on_group_result, **options)

    if not loaded:
        return
    try:
        run(loaded)
        return
    except Exception as error:  # noqa: BLE001 - a bad image fails alone, below
        left = [(item, image) for item, image in loaded if item.row.status == ""]
        if len(left) == 1:
            _fail(left[0][0], _reason(error), bar)
            return
        logger.debug("a batch of %d images failed (%s); restoring them one by one", len(left), error)
    for item, image in left:
        if item.row.status:
            continue
        try:
            run([(item, image)])
        except Exception as error:  # noqa: BLE001 - reported in the summary
            _fail(item, _reason(error), bar)


def _reason(error: BaseException) -> str:
    text = str(error).removeprefix("image 0: ")
    if isinstance(error, (ValueError, TypeError, FileNotFoundError)):
        return text
    return f"{type(error).__name__}: {text}"


def _save(item: _Item, result: Any, bar: Any) -> None:
    try:
        result.save(item.target)
    except (OSError, ValueError) as error:
        _fail(item, f"cannot write '{item.target}': {error}", bar)
        return
    fill_row(item.row, result)
    bar.update(1)


def fill_row(row: FolderRow, result: Any) -> FolderRow:
    """Mark ``row`` restored with the numbers of ``result`` (a :class:`oscfast.Restoration`)."""
    row.status = RESTORED
    row.stop_iteration = int(result.stop_iteration)
    row.rule = str(result.rule)
    row.probe = str(result.probe)
    row.iterations_run = int(result.iterations_run)
    row.seconds = round(float(result.seconds), 3)
    return row


def _fail(item: _Item, reason: str, bar: Any) -> None:
    reason = " ".join(reason.split())  # one line, for the CSV and stderr
    logger.warning("skipping %s: %s", item.row.file, reason)
    item.row.status = f"{FAILED}: {reason}"
    bar.update(1)


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------


def _write_summary(summary: FolderSummary) -> None:
    names = [f.name for f in fields(FolderRow)]
    table = _stdio.StringIO()
    writer = csv.DictWriter(table, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in summary.rows:
        writer.writerow({key: "" if value is None else value for key, value in asdict(row).items()})
    try:
        write_text_atomic(summary.out_dir / SUMMARY_CSV, table.getvalue())
        write_text_atomic(summary.out_dir / SUMMARY_JSON, _summary_json(summary))
    except OSError as error:
        logger.error("cannot write the summary into '%s': %s", summary.out_dir, error)


def _summary_json(summary: FolderSummary) -> str:
    """The summary as JSON, one line per image."""
    data = summary.as_dict()
    rows = data.pop("rows")
    head = json.dumps(data)[:-1]
    lines = ",\n  ".join(json.dumps(row) for row in rows)
    return f'{head}, "rows": [\n  {lines}\n]}}\n' if rows else f'{head}, "rows": []}}\n'
