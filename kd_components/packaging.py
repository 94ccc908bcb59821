"""Pack a bundle folder into a MONAI-installable zip: ``<name>_v<version>.zip`` holding ``<name>/...``.

The zip has MONAI's model-zoo layout (``<name>/configs/``, ``<name>/docs/``, ``<name>/LICENSE`` and, only
when asked for, ``<name>/models/``) with ``metadata.json`` carrying the version and its changelog entry, so
``python -m monai.bundle download --name <name> --url file:///.../<name>_v<version>.zip --bundle_dir X``
installs it as ``X/<name>``. The configs import ``kd_components``: an installed bundle runs wherever the
``brats-kd`` package is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kd_components.io import atomic_path

__all__ = ["WEIGHT_FILES", "BundlePackagingError", "bundle_files", "package_bundle", "packaged_metadata"]

#: Files of ``models/`` that a package with weights carries: the network's state dict (required) and its
#: TorchScript export (when present). Training state (``latest*.pt``: optimizer, scheduler) is left out.
WEIGHT_FILES: tuple[str, ...] = ("model.pt", "model.ts")
#: A fixed time stamp for every zip entry, so the same bundle always gives the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_VERSION = re.compile(r"\d+\.\d+\.\d+(?:[-+.][0-9A-Za-z.-]+)?")


class BundlePackagingError(ValueError):
    """The bundle folder, its metadata or the requested package cannot be packed; the message says why."""


def _load_metadata(bundle_dir: Path) -> dict[str, Any]:
    if not bundle_dir.is_dir():
        raise BundlePackagingError(f"no bundle folder at {bundle_dir}")
    meta_file = bundle_dir / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise BundlePackagingError(f"{bundle_dir} is not a MONAI bundle: {meta_file} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise BundlePackagingError(f"{meta_file} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise BundlePackagingError(f"{meta_file} must hold a JSON object")
    return meta


def packaged_metadata(meta: dict[str, Any], version: str | None = None, changelog: str | None = None) -> dict[str, Any]:
    """
    The metadata of a package: ``meta`` with ``version`` set and a changelog entry for it (newest first).

    ``version`` defaults to ``meta["version"]``. A version without an entry in ``meta["changelog"]`` needs
    ``changelog`` (the entry's text); a given ``changelog`` replaces an existing entry. ``meta`` is not changed.
    """
    version = version or meta.get("version")
    if not version:
        raise BundlePackagingError("metadata.json has no 'version'; pass a version")
    if not _VERSION.fullmatch(version):
        raise BundlePackagingError(f"version {version!r} is not of the form MAJOR.MINOR.PATCH (e.g. 0.1.0)")
    entries = dict(meta.get("changelog") or {})
    if changelog is None and version not in entries:
        raise BundlePackagingError(
            f"version {version} has no changelog entry in metadata.json (it has {sorted(entries)}); "
            "pass a changelog text for it"
        )
    if changelog is not None:
        entries.pop(version, None)
        entries = {version: changelog, **entries}
    return {**meta, "version": version, "changelog": entries}


def _files_under(folder: Path) -> Iterator[Path]:
    """Every plain file below ``folder``, sorted, skipping hidden files and folders and Python caches."""
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in parts):
            yield path


def bundle_files(bundle_dir: str | os.PathLike[str], with_weights: bool = False) -> list[Path]:
    """
    The files of a bundle that a package carries, relative to ``bundle_dir``: ``configs/``, ``docs/`` and
    ``LICENSE``, plus ``models/model.pt`` (and ``models/model.ts`` if it exists) with ``with_weights``.
    Raises :class:`BundlePackagingError` when one of them is missing.
    """
    root = Path(bundle_dir)
    _load_metadata(root)
    missing = [name for name in ("docs", "LICENSE") if not (root / name).exists()]
    if missing:
        raise BundlePackagingError(f"{root} lacks {', '.join(missing)}, which a MONAI bundle carries")
    files = [p.relative_to(root) for folder in ("configs", "docs") for p in _files_under(root / folder)]
    files.append(Path("LICENSE"))
    if with_weights:
        weights = root / "models" / WEIGHT_FILES[0]
        if not weights.is_file():
            raise BundlePackagingError(
                f"--with-weights needs trained weights at {weights}; train the bundle first (weights are never "
                "committed) or leave out --with-weights"
            )
        files += [Path("models", n) for n in WEIGHT_FILES if (root / "models" / n).is_file()]
    return files


def package_bundle(
    bundle_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    version: str | None = None,
    with_weights: bool = False,
    changelog: str | None = None,
) -> Path:
    """
    Write ``<output_dir>/<name>_v<version>.zip`` (atomically) and return its path; ``<name>`` is the bundle
    folder's name, the zip's top folder.

    Args:
        bundle_dir: the bundle folder, e.g. ``bundles/hybrid_teacher``.
        output_dir: where the zip goes (created if needed).
        version: the package version (default: ``version`` in ``configs/metadata.json``). The packaged
            ``metadata.json`` carries it; the bundle's own file is not changed.
        with_weights: also pack ``models/model.pt`` (required) and ``models/model.ts`` (if present).
        changelog: the changelog entry for ``version``; needed when ``metadata.json`` has none for it.
    """
    root = Path(bundle_dir)
    meta = packaged_metadata(_load_metadata(root), version, changelog)
    name = root.resolve().name
    files = bundle_files(root, with_weights)
    target = Path(output_dir) / f"{name}_v{meta['version']}.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            info = zipfile.ZipInfo(f"{name}/{rel.as_posix()}", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            if rel == Path("configs", "metadata.json"):
                zf.writestr(info, json.dumps(meta, indent=4) + "\n")
            else:
                info.file_size = (root / rel).stat().st_size  # zipfile switches to ZIP64 for large weights
                with open(root / rel, "rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    return target
