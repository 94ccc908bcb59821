"""Fast NIfTI reading and writing: Intel ISA-L's gzip (``isal``) and one thread per file.

A BraTS case is four gzip-compressed NIfTI files. nibabel decompresses them with Python's ``gzip`` module as a
stream, one after the other; ISA-L's ``igzip`` decompresses the same bytes several times faster, and it and
NumPy's casts let other threads run meanwhile, so the four files of a case are read at once.

- :class:`ParallelNibabelReader` is MONAI's ``NibabelReader`` (the bundles' ``LoadImaged``) with the files of a
  multi-channel image decompressed and cast to ``float32`` in threads; the arrays, affines and metadata are those
  of ``NibabelReader`` (tested).
- :func:`gzip_decompress` / :func:`gzip_compress` use ISA-L where it is installed and Python's ``gzip`` otherwise
  (the same format either way).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ensure_tuple

try:  # ISA-L: a dependency of the project; Python's gzip is the fallback on a platform without its wheel
    from isal import igzip as _fast_gzip
except ImportError:  # pragma: no cover - exercised only where isal is missing
    _fast_gzip = None

__all__ = [
    "FAST_GZIP",
    "ParallelNibabelReader",
    "gzip_compress",
    "gzip_decompress",
    "read_nifti",
    "unreadable_nifti",
    "voxels",
]

#: Whether ISA-L's gzip is used (else Python's).
FAST_GZIP = _fast_gzip is not None
#: gzip level of the label maps written: 1, the fastest of zlib's levels (nibabel's default too).
WRITE_LEVEL = 1


def gzip_decompress(data: bytes) -> bytes:
    """The decompressed bytes of a gzip stream (ISA-L where installed)."""
    return _fast_gzip.decompress(data) if _fast_gzip is not None else gzip.decompress(data)


def gzip_compress(data: bytes, level: int = WRITE_LEVEL) -> bytes:
    """``data`` as a gzip stream at ``level`` (ISA-L's levels 0-3 where installed, else zlib's 0-9)."""
    if _fast_gzip is not None:
        return _fast_gzip.compress(data, compresslevel=min(level, 3))
    return gzip.compress(data, compresslevel=level, mtime=0)


def unreadable_nifti(path: str | os.PathLike[str], err: BaseException) -> str:
    """The one-line reason that the file ``path`` cannot be used, naming it: ``<path>: cannot be read as NIfTI
    (<error type>: <message>)``."""
    return f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err})"


def read_nifti(path: str | os.PathLike[str]) -> nib.Nifti1Image | nib.Nifti2Image:
    """A NIfTI image whose voxels are in memory: a ``.nii.gz`` is read and decompressed in one go (ISA-L), anything
    else is opened by ``nibabel.load``. Raises what nibabel raises for a file that is not NIfTI."""
    path = Path(path)
    if not path.name.lower().endswith(".gz"):
        return nib.load(path)
    raw = gzip_decompress(path.read_bytes())
    try:
        return nib.Nifti1Image.from_bytes(raw)
    except nib.filebasedimages.ImageFileError:
        return nib.Nifti2Image.from_bytes(raw)


def voxels(
    img: nib.Nifti1Image | nib.Nifti2Image, dtype: Any = np.float32, out: np.ndarray | None = None
) -> np.ndarray:
    """The image's voxels as nibabel gives them (``np.asanyarray(img.dataobj)``: the header's scale factors
    applied), cast to ``dtype``, in one pass where the voxels are in memory and unscaled (no intermediate copy).
    With ``out`` (an array of the image's shape), the voxels are written into it (in its memory order) and it is
    returned."""
    proxy = img.dataobj  # after loading, the scale factors live in the proxy (the header's are reset)
    in_memory = isinstance(proxy, nib.arrayproxy.ArrayProxy) and hasattr(proxy.file_like, "getbuffer")
    if in_memory and float(proxy.slope) == 1.0 and float(proxy.inter) == 0.0:
        fileobj = proxy.file_like
        count = int(np.prod(proxy.shape))
        raw = np.frombuffer(fileobj.getbuffer(), dtype=proxy.dtype, count=count, offset=int(proxy.offset))
        array = raw.reshape(proxy.shape, order=proxy.order)
        if out is None:
            return array.astype(dtype)  # a copy: the buffer is not ours
    else:
        array = np.asanyarray(proxy)
        if out is None:
            return array.astype(dtype, copy=False)
    if out.shape != array.shape:
        raise ValueError(f"the image's shape {array.shape} is not the output's {out.shape}")
    np.copyto(out, array, casting="unsafe")
    return out


class ParallelNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` reading the files of a multi-channel image at once, one thread per file.

    :meth:`read` decompresses each file (:func:`read_nifti`) and casts its voxels to ``dtype`` in a thread of its
    own; :meth:`get_data` then stacks them and builds the metadata exactly as ``NibabelReader`` does.
    Arguments as ``NibabelReader``'s, plus ``dtype``, the type the voxels are cast to (``LoadImage``'s default,
    ``float32``, so that its own cast copies nothing).
    """

    def __init__(self, *args: Any, dtype: Any = np.float32, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dtype = np.dtype(dtype)
        self._arrays: dict[int, np.ndarray] = {}
        self._stacked: np.ndarray | None = None

    def _open(self, name: str | os.PathLike[str]) -> nib.Nifti1Image | nib.Nifti2Image:
        try:
            return correct_nifti_header_if_necessary(read_nifti(name))
        except Exception as err:  # name the file: a message about one of several files must say which
            raise ValueError(unreadable_nifti(name, err)) from err

    def _voxels(self, img: Any, name: str | os.PathLike[str], out: np.ndarray | None) -> np.ndarray:
        try:
            return voxels(img, self.dtype, out)
        except Exception as err:
            raise ValueError(unreadable_nifti(name, err)) from err

    def read(self, data: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], **kwargs: Any) -> Any:
        """The images of ``data`` (one file or a list), their voxels already in memory.

        The 3D files of a list with one shape are cast into one C-ordered array ``(files, *shape)``, one thread per
        file, which :meth:`get_data` returns as it is (no stacking copy, and LoadImage's own ``ascontiguousarray``
        copies nothing)."""
        filenames = ensure_tuple(data)
        self.filenames = filenames
        with ThreadPoolExecutor(max_workers=len(filenames), thread_name_prefix="nifti") as pool:
            images = list(pool.map(self._open, filenames))
            outs: Sequence[np.ndarray | None] = [None] * len(images)
            self._stacked = None
            if len(images) > 1 and len({img.shape for img in images}) == 1 and len(images[0].shape) == 3:
                self._stacked = np.empty((len(images), *images[0].shape), dtype=self.dtype)
                outs = list(self._stacked)
            arrays = list(pool.map(self._voxels, images, filenames, outs))
        self._arrays = {id(img): array for img, array in zip(images, arrays, strict=True)}
        return images if len(filenames) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """``NibabelReader.get_data``: the stacked voxels ``(files, H, W, D)`` and the first image's metadata. For
        3D files of one shape the voxels are already stacked (:meth:`read`): ``NibabelReader`` builds the
        metadata on one-voxel views of them, so that its stacking copies nothing."""
        stacked, self._stacked = self._stacked, None
        if stacked is None:
            return super().get_data(img)
        self._arrays = {key: array[:1, :1, :1] for key, array in self._arrays.items()}
        _, meta = super().get_data(img)
        return stacked, meta

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        array = self._arrays.pop(id(img), None)
        return array if array is not None else super()._get_array_data(img, filename)
