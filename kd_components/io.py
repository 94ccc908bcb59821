"""Atomic file output (a reader never sees a half-written file, even if the writer is killed), and a check
that an output folder can take the results before a run starts."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: The user's cache folder of the project (``$XDG_CACHE_HOME/brats-kd``, else ``~/.cache/brats-kd``): exports of
#: checkpoints in read-only folders, and the preprocessed training cases (``kd_components.data.preprocessed``).
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "brats-kd"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    The temporary name keeps the file's extensions (``.nii.gz``, ``.json``) so writers that
    choose a format from the name (nibabel, torch) behave as for the final path.

    Example::

        with atomic_path("out/case.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    stem = final.name.removesuffix(suffix)
    # the writer's process id in the name: a temporary whose process is gone was left by a killed run
    # (clean_stale_temporaries removes it)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{stem}.{os.getpid()}{_TMP_MARK}", suffix=f".tmp{suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the final file the usual mode
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: Between the writer's process id and mkstemp's random part in the name of an :func:`atomic_path` temporary.
_TMP_MARK = ".pid-"
_TEMPORARY = re.compile(r"^\.(?P<stem>.*)\.(?P<pid>\d+)" + re.escape(_TMP_MARK) + r"\w+\.tmp(\.[\w.]+)?$")


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the :func:`atomic_path` temporaries in ``folder`` whose writing process no longer runs (left by a run
    that was killed mid-write); return them. Temporaries of running processes (a concurrent run) are kept."""
    removed = []
    for entry in Path(folder).iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file() or _process_alive(int(match["pid"])):
            continue
        entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on the file ``path`` (created if needed) for the block:
    read-modify-write of a file shared by concurrent runs (e.g. one output folder's volume table)."""
    import fcntl

    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def save_json_atomic(data: Any, path: str | os.PathLike[str], indent: int = 2) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n")


def save_nifti_atomic(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    dtype: np.dtype | type | None = None,
    description: str | None = None,
) -> None:
    """Write a 3D ``array`` (H, W, D) with ``affine`` (4, 4) to a NIfTI file atomically.

    ``dtype`` sets the on-disk data type (default: the array's). The header's q- and s-form
    both carry ``affine`` so every reader (nibabel, ITK, MONAI's LoadImage) agrees on it;
    ``description`` goes into its ``descrip`` field (at most 79 characters).
    """
    data = np.asarray(array if dtype is None else array.astype(dtype))
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_data_dtype(data.dtype)
    if description is not None:
        img.header["descrip"] = description.encode()[:79]
    with atomic_path(path) as tmp:
        if tmp.name.lower().endswith(".gz"):  # ISA-L's gzip where installed: the same format, several times faster
            from kd_components.niftiio import gzip_compress

            tmp.write_bytes(gzip_compress(img.to_bytes()))
        else:
            nib.save(img, tmp)


#: The ``descrip`` of the label maps ``brats-kd segment`` and the Deploy app write: what tells them from a user's files
#: in an output folder (another segmentation, a reference), which they never overwrite nor list as their own.
LABEL_MAP_DESCRIPTION = "brats-kd label map"


def is_brats_kd_label_map(path: str | os.PathLike[str]) -> bool:
    """Whether the NIfTI file ``path`` is a label map ``brats-kd segment`` or the Deploy app wrote
    (:data:`LABEL_MAP_DESCRIPTION` in its header; only the header is read). ``False`` for a file that is not NIfTI or
    cannot be read."""
    try:
        descrip = nib.load(str(path)).header["descrip"]
    except Exception:  # nibabel raises many types for what is no NIfTI file
        return False
    return np.asarray(descrip).item() == LABEL_MAP_DESCRIPTION.encode()  # S80: trailing NULs dropped


def save_figure_atomic(figure: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write a matplotlib ``figure`` as PNG to ``path`` atomically; return the path."""
    output = Path(path)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png", pil_kwargs={"compress_level": 1})  # a little larger, 3x faster
    return output


#: Free space an inference run asks for before its first case (label maps are about 0.1-1 MB each).
MIN_FREE_MB = 100


class OutputDirError(OSError):
    """The output folder cannot take the results: it is a file, cannot be created or written, or is full."""


def check_output_dir(path: str | os.PathLike[str], min_free_mb: float = MIN_FREE_MB) -> Path:
    """Make sure outputs can be written under ``path`` before any case runs; create it if needed.

    A file in the way, a parent that is a file, a read-only folder or a nearly full disk would otherwise
    surface only after the network has run on the first case, as a long traceback.

    Raises:
        OutputDirError: naming the folder and what is wrong.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"output_dir {folder} is a file, not a folder: choose another --output_dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"cannot create output_dir {folder}: {err.strerror or err}") from err
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise OutputDirError(f"output_dir {folder} is not writable: {err.strerror or err}") from err
    for stale in clean_stale_temporaries(folder):
        logger.info(f"removed {stale}, a temporary file left by a run that was killed while writing")
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise OutputDirError(
            f"only {free_mb:.0f} MB free under output_dir {folder}; at least {min_free_mb:.0f} MB are needed"
        )
    return folder


def replace_between(page: str, section: str, start_marker: str, end_marker: str) -> str:
    """``page`` with the part from ``start_marker`` to ``end_marker`` (both included) replaced by ``section``.

    A generated part of a hand-written page: ``section`` normally begins and ends with the two markers.
    Raises ValueError, naming both lines, when the page lacks either marker.
    """
    start, end = page.find(start_marker), page.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"the page has no generated part: add the lines {start_marker!r} and {end_marker!r}")
    return page[:start] + section + page[end + len(end_marker) :]


def update_generated_part(page: str | os.PathLike[str], section: str, start_marker: str, end_marker: str) -> None:
    """Replace the generated part of the page at ``page`` (see :func:`replace_between`) and write it atomically."""
    path = Path(page)
    with atomic_path(path) as tmp:
        tmp.write_text(replace_between(path.read_text(), section, start_marker, end_marker))


def parse_named_paths(values: Sequence[str], option: str) -> dict[str, Path]:
    """``["teacher=a/model.pt", ...]`` (a repeated ``NAME=PATH`` command-line option) as ``{"teacher": Path(...)}``.

    Raises SystemExit naming ``option`` for a value without ``=``.
    """
    pairs = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            raise SystemExit(f"{option} takes NAME=PATH, got {value!r}")
        pairs[name] = Path(path)
    return pairs
