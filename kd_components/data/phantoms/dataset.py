"""Generating and writing phantom cases and data sets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kd_components.constants import ET_LABEL, MODALITIES, PHANTOM_TASK, SEG_SUFFIX, case_file_name, case_id
from kd_components.data.phantoms.anatomy import _Pose, _resample_anatomy, _sample_pose, _sample_variation
from kd_components.data.phantoms.atlas import _atlas
from kd_components.data.phantoms.contrast import _synthesize_images
from kd_components.data.phantoms.grid import PhantomProfile, resolve_profile
from kd_components.data.phantoms.lesion import _draw_lesion, _LesionSpec, _no_lesion, _sample_lesion
from kd_components.io import save_nifti_atomic


@dataclass
class PhantomCase:
    """One generated case.

    Attributes:
        case_id: BraTS-2023 case id, e.g. ``BraTS-SYN-00003-000``.
        images: modality -> (X, Y, Z) int16 image, in ``MODALITIES`` order (t1c, t1n, t2w, t2f).
        seg: (X, Y, Z) uint8 label map (0, NETC 1, SNFH 2, ET 3).
        affine: (4, 4) voxel-to-world affine shared by all volumes.
        brain_mask: (X, Y, Z) bool, where the images are non-zero.
        tissues: ``csf``, ``gm``, ``wm`` -> (X, Y, Z) float32 partial-volume fractions of the
            normal anatomy (before the lesion was drawn); for tests and analysis, not written.
        kind: the glioma's kind (:data:`~kd_components.data.phantoms.lesion.LESION_KINDS`), ``healthy`` without one.
        region: the main focus's site region (:data:`~kd_components.data.phantoms.atlas.SITE_REGIONS`), or ``""``.
        foci: the number of tumour foci (2-3: multifocal; 0: healthy).
    """

    case_id: str
    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    brain_mask: np.ndarray
    tissues: dict[str, np.ndarray] = field(default_factory=dict)
    kind: str = ""
    region: str = ""
    foci: int = 0

    @property
    def has_enhancing_tumour(self) -> bool:
        """Whether the case contains ET voxels."""
        return bool((self.seg == ET_LABEL).any())


def generate_case(index: int, seed: int, profile: str | PhantomProfile = "small", healthy: bool = False) -> PhantomCase:
    """Generate phantom case ``index`` of data set ``seed`` on the grid of ``profile``.

    ``healthy``: the same brain, pose and contrasts without the tumour (no lesion, no mass effect, an all-zero
    label map): every voxel a network labels in it is a false positive. The result depends only on
    ``(seed, index)``, the profile and ``healthy``. Takes about 1 s for
    ``small`` (120, 120, 78) and several seconds for ``brats`` (240, 240, 155), plus about
    3 s once per process to load the MNI templates.

    Returns:
        A :class:`PhantomCase` whose volumes all have the profile's shape (X, Y, Z).
    """
    _check_non_negative(index=index, seed=seed)
    grid = resolve_profile(profile)
    atlas = _atlas()
    rng, pose, lesion = _case_plan(index, seed, grid)
    if healthy:
        lesion = replace(lesion, mass_effect=0.0)
    variation = _sample_variation(rng, grid)
    anatomy = _resample_anatomy(atlas, grid, pose, lesion, variation)
    maps = _draw_lesion(rng, anatomy, lesion, grid)  # drawn for a healthy brain too: the same contrasts follow
    if healthy:
        maps = _no_lesion(grid)
    images = _synthesize_images(rng, anatomy, maps, grid)
    return PhantomCase(
        case_id=case_id(PHANTOM_TASK, index),
        images=images,
        seg=maps.seg,
        affine=grid.affine,
        brain_mask=anatomy.brain,
        tissues={"csf": anatomy.csf, "gm": anatomy.gm, "wm": anatomy.wm},
        kind="healthy" if healthy else lesion.kind,
        region="" if healthy else lesion.region,
        foci=0 if healthy else len(lesion.foci),
    )


def _case_plan(index: int, seed: int, grid: PhantomProfile) -> tuple[np.random.Generator, _Pose, _LesionSpec]:
    """The first draws of case ``index``: its generator (to be used on), the brain's pose and the glioma's spec."""
    rng = np.random.default_rng([seed, index])
    pose = _sample_pose(rng, grid, _atlas())
    return rng, pose, _sample_lesion(rng, _atlas(), pose)


def lesion_plan(index: int, seed: int, profile: str | PhantomProfile = "small") -> tuple[str, str, int, float]:
    """``(kind, region, foci, core radius in mm)`` of case ``index`` of data set ``seed`` without drawing it (a few
    milliseconds): for choosing cases of a kind, and for tests."""
    _check_non_negative(index=index, seed=seed)
    _, _, lesion = _case_plan(index, seed, resolve_profile(profile))
    return lesion.kind, lesion.region, len(lesion.foci), lesion.radius_mm


def write_case(case: PhantomCase, root: str | os.PathLike[str], labelled: bool = True) -> Path:
    """Write ``case`` in the BraTS-2023 layout and return its folder ``<root>/<case_id>``.

    Files: ``<case_id>-{t1c,t1n,t2w,t2f}.nii.gz`` (int16) and, when ``labelled``,
    ``<case_id>-seg.nii.gz`` (uint8); an unlabelled case removes a stale seg file. Each file
    is written atomically.
    """
    folder = Path(root) / case.case_id
    for modality in MODALITIES:
        save_nifti_atomic(case.images[modality], case.affine, folder / case_file_name(case.case_id, modality))
    seg_path = folder / case_file_name(case.case_id, SEG_SUFFIX)
    if labelled:
        save_nifti_atomic(case.seg, case.affine, seg_path, dtype=np.uint8)
    else:
        seg_path.unlink(missing_ok=True)
    return folder


def make_phantom_dataset(
    output_dir: str | os.PathLike[str],
    num_cases: int,
    seed: int = 0,
    profile: str | PhantomProfile = "small",
    unlabelled: int = 0,
    workers: int | None = None,
    progress: bool = True,
    healthy: bool = False,
    healthy_share: float = 0.0,
) -> list[str]:
    """Generate and write ``num_cases`` phantoms under ``output_dir``; return their case ids in index order.

    Case ``i`` gets id ``BraTS-SYN-<i:05d>-000``; the last ``unlabelled`` cases are written
    without a segmentation (for semi-supervised distillation). Cases are generated in a pool
    of ``workers`` processes (default: the available cores, at most one per case); each
    worker loads the MNI templates once. Results do not depend on ``workers``. ``healthy``: tumour-free brains
    (:func:`generate_case`), written with their all-zero label maps; keep them in a folder of their own (their
    case ids are those of the tumour phantoms). ``healthy_share``: the probability that a labelled case is a
    healthy brain with its all-zero label map (:func:`is_healthy_case`), so that training sees "no tumour here".
    """
    _check_non_negative(num_cases=num_cases, seed=seed, unlabelled=unlabelled)
    if not 0.0 <= healthy_share <= 1.0:
        raise ValueError(f"healthy_share must be in [0, 1], got {healthy_share}")
    if unlabelled > num_cases:
        raise ValueError(f"unlabelled ({unlabelled}) cannot exceed num_cases ({num_cases})")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    grid = resolve_profile(profile)
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    labelled = num_cases - unlabelled
    jobs = [
        (i, seed, grid, str(root), i < labelled, healthy or (i < labelled and is_healthy_case(seed, i, healthy_share)))
        for i in range(num_cases)
    ]
    workers = min(workers or _available_cores(), max(num_cases, 1))
    done = _run_jobs(jobs, workers)
    if progress:
        from tqdm import tqdm

        done = tqdm(done, total=num_cases, desc=f"phantoms ({grid.name})", unit="case")
    for _ in done:
        pass
    return [case_id(PHANTOM_TASK, i) for i in range(num_cases)]


def is_healthy_case(seed: int, index: int, healthy_share: float) -> bool:
    """Whether labelled case ``index`` of data set ``seed`` is drawn healthy at ``healthy_share``: a draw of its own
    (``(seed, index, 1)``), independent of the case's other random numbers, so raising the share only turns more
    cases healthy."""
    return bool(np.random.default_rng([seed, index, 1]).random() < healthy_share)


_Job = tuple[int, int, PhantomProfile, str, bool, bool]


def _generate_and_write(job: _Job) -> str:
    """Worker task: generate one case and write it; returns its case id."""
    index, seed, grid, root, labelled, healthy = job
    case = generate_case(index, seed, grid, healthy)
    write_case(case, root, labelled=labelled)
    return case.case_id


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[str]:
    """Run jobs in this process (one worker) or a process pool, yielding case ids as they finish."""
    if workers <= 1:
        for job in jobs:
            yield _generate_and_write(job)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_atlas) as pool:
        futures = [pool.submit(_generate_and_write, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_non_negative(**values: int) -> None:
    """Raise ValueError naming the first argument that is not a non-negative integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
