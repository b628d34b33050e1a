"""Shared helpers of the benchmark scripts: machine description, data location, result files."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def data_dir() -> Path | None:
    """The paper's images: $OSCFAST_DATA, else ../shared/data beside the repo, else None."""
    candidates = [os.environ.get("OSCFAST_DATA"), REPO / ".shared_data", REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # other work on the machine when the numbers were taken (timings are only comparable
        # within one run when this is high)
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    from oscfast.hardware import cpu_description

    info.update(cpu_description())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_tag(info: dict[str, Any]) -> str:
    """Short file-name tag: the GPU name or 'cpu<N>'."""
    if "gpu" in info:
        return info["gpu"].replace("NVIDIA ", "").split()[0].lower()
    return f"cpu{info['cpu_count']}"


def write_results(name: str, markdown: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` into the results folder (or ``out_dir``)."""
    folder = Path(out_dir) if out_dir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.md").write_text(markdown)
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=1, default=_json_default))
    return folder / f"{name}.md"


def machine_header(info: dict[str, Any]) -> str:
    """Markdown lines naming the machine."""
    lines = [f"- {key}: {value}" for key, value in info.items()]
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


HALVES_FILE = REPO / "bench" / "halves.md"


def parse_halves(text: str) -> dict[str, str]:
    """Experiment name -> half, from the tables of bench/halves.md (rows ``| names | half | ... |``;
    ``Set14 x4 and x8: a, b`` rows expand to ``a-x4-set14, a-x8-set14, ...``)."""
    halves: dict[str, str] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[1] not in ("selection", "report"):
            continue
        names = cells[0]
        match = re.match(r"Set14 x4 and x8:\s*(.*)", names)
        if match:
            for name in match.group(1).split(","):
                for factor in (4, 8):
                    halves[f"{name.strip()}-x{factor}-set14"] = cells[1]
            continue
        for name in names.split(","):
            if re.fullmatch(r"[a-z0-9-]+", name.strip()):
                halves[name.strip()] = cells[1]
    return halves


def halves() -> dict[str, str]:
    """Experiment name -> "selection" or "report", as bench/halves.md says (the one record of
    which case is in which half; a recorded run's own copy may predate a move)."""
    return parse_halves(HALVES_FILE.read_text())
