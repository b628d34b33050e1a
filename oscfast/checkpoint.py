"""Checkpoints of a run: written atomically every so often, refused when they do not match.

A checkpoint holds the whole state of a :class:`oscfast.engine.BatchRun` (network weights,
Adam moments and step counts, inputs, the reg-noise generators' states, averages, traces, the
kept outputs, every rule's state) and a *fingerprint* of the configuration that produced it
(oscfast version, configurations, seed, task and observation). Resuming a checkpoint whose
fingerprint differs from the run's is refused with the first difference named. On a CPU, a
run interrupted and resumed ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from oscfast.checks import check_writable_file
from oscfast.files import atomic_write



class BatchRun(Protocol):
    """What a checkpoint needs of an :class:`oscfast.engine.BatchRun` (a protocol, so that this
    module stays below the engine)."""

    groups: Any

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

__all__ = ["Checkpoint", "FORMAT", "fingerprint_tensor"]

logger = logging.getLogger(__name__)

#: the layout version of checkpoint files (2: tensors by name, rings for the driving fits only;
#: format 1, a list with rings for every fit, is still read)
FORMAT = 2
_READABLE = (1, 2)


def fingerprint_tensor(tensor: torch.Tensor) -> str:
    """A short hash of a tensor's values (to recognise an observation)."""
    data = tensor.detach().cpu().contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


@dataclass
class Checkpoint:
    """Where and how often to write checkpoints, and which one to resume.

    Args:
        path: file to write (None: do not write).
        every: seconds between two writes (0: at every sync).
        resume: a checkpoint to continue from (None: start fresh).
        fingerprint: what the run is (strings); a resumed checkpoint must match it.
    """

    path: Path | None = None
    every: float = 60.0
    resume: Path | None = None
    fingerprint: Mapping[str, str] = field(default_factory=dict)
    _last: float = field(default=0.0, init=False, repr=False)
    #: the iteration a resumed run continued from (None until :meth:`restore` loaded one)
    resumed_at: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = check_writable_file(self.path, what="checkpoint")
        if self.resume is not None:
            self.resume = Path(self.resume)
            if not self.resume.is_file():
                raise FileNotFoundError(f"checkpoint '{self.resume}' does not exist")
        if not self.every >= 0:
            raise ValueError(f"checkpoint_every must be >= 0 seconds, got {self.every}")
        self._last = time.monotonic()

    def restore(self, run: BatchRun) -> None:
        """Load :attr:`resume` into ``run`` (after checking that it is this run's)."""
        if self.resume is None:
            return
        try:
            payload = torch.load(self.resume, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to know
            raise ValueError(f"checkpoint '{self.resume}' cannot be read: {error}") from None
        if not isinstance(payload, dict) or payload.get("format") not in _READABLE:
            raise ValueError(f"'{self.resume}' is not an oscfast checkpoint of format {' or '.join(map(str, _READABLE))}")
        saved = payload.get("fingerprint", {})
        for key in sorted(set(saved) | set(self.fingerprint)):
            if saved.get(key) != self.fingerprint.get(key):
                raise ValueError(
                    f"checkpoint '{self.resume}' was made by another run: its {key} is "
                    f"{saved.get(key)!r}, this run's is {self.fingerprint.get(key)!r}"
                )
        run.load_state_dict(payload["state"])
        self.resumed_at = int(run.groups[0].done)
        logger.info("resumed from %s at iteration %d", self.resume, run.groups[0].done)

    def __call__(self, run: BatchRun) -> None:
        """Write a checkpoint when :attr:`every` seconds have passed since the last one."""
        if self.path is None or time.monotonic() - self._last < self.every:
            return
        self.write(run)

    def finish(self, run: BatchRun) -> None:
        """Write the final state (a finished run resumes to its result at once)."""
        if self.path is not None:
            self.write(run)

    def write(self, run: BatchRun) -> Path:
        """Write the run's state now, atomically (a temporary file, then a rename)."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {"format": FORMAT, "fingerprint": dict(self.fingerprint), "state": run.state_dict()}
        atomic_write(self.path, lambda stream: torch.save(payload, stream))
        self._last = time.monotonic()
        return self.path
