"""One check per kind of value, with one message style, for every entry point.

Every public function that takes a number, a flag, a folder or a large array from a caller
validates it here, so that ``restore``, ``restore_many``, ``restore_folder``, ``degrade`` and
the task options accept and refuse the same values with the same words:
``"<name> must be <expected>, got <what was given>"``. A number of the wrong type is a
``TypeError``, a number of the right type but outside its range a ``ValueError``; a whole
number may be given as ``4`` or ``4.0`` (not ``4.5``, not ``True``).
"""
from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "check_bool",
    "check_host_allocation",
    "check_integer",
    "check_real",
    "check_writable_file",
    "check_writable_folder",
]

#: below this many bytes an allocation is made without asking the system for its free memory
HOST_CHECK_BYTES = 1 << 28


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def check_integer(
    value: object, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int: a whole number (``4``, ``4.0``, ``np.int64(4)``) within the bounds.

    Raises:
        TypeError: not a real number (a string, None, a bool).
        ValueError: not whole, not finite, or outside ``[minimum, maximum]``.

    Example:
        >>> check_integer(4.0, "factor", minimum=1)
        4
    """
    expected = _integer_expectation(minimum, maximum)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        real = float(value)
        if not (math.isfinite(real) and real.is_integer()):
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        number = int(real)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def _integer_expectation(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum == 1:
        return "a positive integer"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


def check_real(
    value: object,
    name: str,
    expected: str = "a number",
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_minimum: bool = False,
) -> float:
    """``value`` as a finite float within the bounds (``open_minimum``: strictly above it).

    Raises:
        TypeError: not a real number (a string, None, a bool).
        ValueError: NaN, infinite, or outside the bounds.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number ({expected}), got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number ({expected}), got {value!r}")
    below = minimum is not None and (number <= minimum if open_minimum else number < minimum)
    if below or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_bool(value: object, name: str) -> bool:
    """``value`` as a bool (``True``/``False`` or numpy's bools only).

    Raises:
        TypeError: anything else, ``1`` and ``"yes"`` included.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")
    return bool(value)


def check_writable_file(path: str | os.PathLike[str], *, what: str = "file", suffixes: tuple[str, ...] | None = None) -> Path:
    """Check before any work that a file can be written at ``path``: an accepted suffix, not a
    folder, and a folder that exists (or can be created under a writable one).

    Returns:
        The path (``~`` expanded).

    Raises:
        ValueError: naming the problem.
    """
    path = Path(path).expanduser()
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"cannot write the {what} '{path}': expected a name ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"cannot write the {what} '{path}': it is a folder")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the {what} '{path}': the folder '{folder}' is not writable")
    return path


def check_writable_folder(path: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """Create the folder ``path`` if needed and check, by writing a file into it and removing
    it, that it takes files (permissions alone do not tell: read-only mounts, quotas).

    Returns:
        The folder (``~`` expanded).

    Raises:
        ValueError: a file in the way, or a folder that cannot be created or written.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} '{folder}' is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".oscfast-write-test.", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise ValueError(f"{what} '{folder}' is not writable: {error.strerror or error}") from None
    return folder


def check_host_allocation(nbytes: int, what: str, *, hint: str = "use a smaller image") -> None:
    """Raise :class:`oscfast.TooLargeError` before allocating ``nbytes`` on the host when they
    exceed 90% of the free memory (an array may declare a huge shape over little real memory,
    e.g. ``np.broadcast_to``; converting it would allocate all of it).

    Args:
        nbytes: the bytes the allocation needs.
        what: what is allocated, for the message (``"image of shape (H, W, C)"``).
        hint: what the caller can do about it.
    """
    if nbytes <= HOST_CHECK_BYTES:
        return
    import torch

    from oscfast.memory import TooLargeError, available_bytes

    free = available_bytes(torch.device("cpu"))
    if nbytes > 0.9 * free:
        raise TooLargeError(
            f"{what} is too large for memory: it needs about {nbytes / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB are free; {hint}"
        )


def check_image_array(
    image: object,
    name: str = "image",
    *,
    min_size: int = 1,
    unit_range: bool = True,
    allow_integer: bool = False,
) -> np.ndarray:
    """Check a numpy image of shape (H, W) or (H, W, C) and return it as a plain ndarray.

    Args:
        image: the array.
        name: how messages name it.
        min_size: the smallest height and width.
        unit_range: values must lie in [0, 1] (estimators of noise take unclipped images: False).
        allow_integer: integer arrays pass too (as values, not as 8-bit levels).

    Raises:
        TypeError: not a numpy array, or of a dtype that does not hold real numbers.
        ValueError: wrong number of dimensions, empty or too small, NaN/inf, out of range; a
            :class:`oscfast.TooLargeError` when float64 work copies would not fit in memory.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    array = np.asarray(image)  # np.matrix and other subclasses: a plain array
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if array.shape[0] < min_size or array.shape[1] < min_size:
        raise ValueError(f"{name} must be at least {min_size}x{min_size}, got shape {array.shape}")
    check_host_allocation(array.size * 16, f"{name} of shape {array.shape}")  # float64 work copies
    integer = np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_)
    if not (np.issubdtype(array.dtype, np.floating) or (allow_integer and integer)):
        hint = " (divide a uint8 image by 255)" if array.dtype == np.uint8 else ""
        raise TypeError(f"{name} must be a float array{' with values in [0, 1]' if unit_range else ''}, got {array.dtype}{hint}")
    lo, hi = float(np.min(array)), float(np.max(array))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if unit_range and (lo < 0.0 or hi > 1.0):
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:.6g}, {hi:.6g}]")
    return array
