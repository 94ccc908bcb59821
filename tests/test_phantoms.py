"""Tests of the MNI152-based BraTS phantom generator, its preview and ``brats-kd phantoms``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kd_components.constants import (
    BACKGROUND_LABEL,
    ET_LABEL,
    MODALITIES,
    NETC_LABEL,
    PHANTOM_TASK,
    SEG_SUFFIX,
    SNFH_LABEL,
    case_file_name,
    case_id,
)
from kd_components.data.phantoms import (
    LESION_KINDS,
    MULTIFOCAL_PROBABILITY,
    PROFILES,
    SITE_SHARES,
    PhantomCase,
    PhantomProfile,
    generate_case,
    is_healthy_case,
    lesion_plan,
    make_phantom_dataset,
    resolve_profile,
)
from kd_components.data.preview import save_preview
from tests.conftest import brats_kd

SEED = 0
#: Cases 0..5 of seed 0: case 1 has no enhancing tumour, the others do (checked below).
NUM_CASES = 6
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    """A modest batch of small phantoms shared by the tests of this module."""
    return [generate_case(i, SEED, "small") for i in range(NUM_CASES)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three cases written by two worker processes, the last one unlabelled."""
    root = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(root, 3, seed=SEED, profile="small", unlabelled=1, workers=2, progress=False)
    return root


def _normal(case: PhantomCase, tissue: str) -> np.ndarray:
    """Voxels (bool, X, Y, Z) that are almost purely ``tissue`` and not lesion."""
    return (case.tissues[tissue] > 0.9) & (case.seg == BACKGROUND_LABEL) & case.brain_mask


# ------------------------------------------------------------------------------------------------
# Grids
# ------------------------------------------------------------------------------------------------


def test_profiles_have_brats_grid_and_lps_affine() -> None:
    brats, small = PROFILES["brats"], PROFILES["small"]
    assert brats.shape == (240, 240, 155) and brats.spacing_mm == 1.0
    assert small.shape == (120, 120, 78) and small.spacing_mm == 2.0
    np.testing.assert_allclose(brats.affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])
    for profile in (brats, small):
        assert nib.aff2axcodes(profile.affine) == ("L", "P", "S")
    # the small grid covers the same field of view (voxel edges coincide)
    (lo_b, hi_b), (lo_s, hi_s) = brats.world_bounds_mm(), small.world_bounds_mm()
    np.testing.assert_allclose(lo_s - 0.5, lo_b - 0.0, atol=0.51)
    np.testing.assert_allclose(hi_s[:2] + 0.5, hi_b[:2], atol=0.51)


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown phantom profile 'huge'.*brats.*small"):
        resolve_profile("huge")
    custom = PhantomProfile("custom", (10, 10, 10), 3.0)
    assert resolve_profile(custom) is custom
    with pytest.raises(ValueError, match="spacing_mm"):
        PhantomProfile("flat", (10, 10, 10), 0.0)
    with pytest.raises(ValueError, match="shape"):
        PhantomProfile("empty", (10, 0, 10), 1.0)


# ------------------------------------------------------------------------------------------------
# Volumes and labels
# ------------------------------------------------------------------------------------------------


def test_case_arrays_shapes_dtypes_and_ids(cases: list[PhantomCase]) -> None:
    shape = PROFILES["small"].shape
    for index, case in enumerate(cases):
        assert case.case_id == case_id(PHANTOM_TASK, index)
        assert list(case.images) == list(MODALITIES)
        for image in case.images.values():
            assert image.shape == shape and image.dtype == np.int16
            assert 100 < image.max() < 6000  # scanner-like range
        assert case.seg.shape == shape and case.seg.dtype == np.uint8
        np.testing.assert_array_equal(case.affine, PROFILES["small"].affine)


def test_labels_are_brats_2023_values_inside_the_brain(cases: list[PhantomCase]) -> None:
    for case in cases:
        assert set(np.unique(case.seg)) <= {BACKGROUND_LABEL, NETC_LABEL, SNFH_LABEL, ET_LABEL}
        assert (case.seg == SNFH_LABEL).sum() > 0 and np.isin(case.seg, (NETC_LABEL, ET_LABEL)).sum() > 0
        assert not np.any((case.seg > 0) & ~case.brain_mask)
        whole = (case.seg > 0).sum()
        assert 0.0003 < whole / case.brain_mask.sum() < 0.3  # a lesion, not a speck or half the brain


def test_skull_stripped_zero_outside_brain(cases: list[PhantomCase]) -> None:
    for case in cases:
        for modality, image in case.images.items():
            np.testing.assert_array_equal(image != 0, case.brain_mask, err_msg=f"{case.case_id} {modality}")


def test_brain_is_centred_in_the_field_of_view(cases: list[PhantomCase]) -> None:
    nx, ny, nz = PROFILES["small"].shape
    for case in cases:
        index = np.argwhere(case.brain_mask)
        lo, hi = index.min(axis=0), index.max(axis=0)
        assert lo[0] > 5 and hi[0] < nx - 6 and lo[1] > 5 and hi[1] < ny - 6
        assert abs((lo[0] + hi[0]) / 2 - (nx - 1) / 2) < 6 and abs((lo[1] + hi[1]) / 2 - (ny - 1) / 2) < 6
        assert hi[2] < nz - 1  # the top of the brain is not cut
        assert 150_000 < case.brain_mask.sum() < 300_000  # about 1.2-2.4 litres at 8 mm^3 per voxel


def test_regions_are_nested(cases: list[PhantomCase]) -> None:
    for case in cases:
        core = np.isin(case.seg, (NETC_LABEL, ET_LABEL))
        whole = case.seg > 0
        grown = ndimage.binary_dilation(core) & case.brain_mask
        assert whole[grown].mean() > 0.9, case.case_id
        necrosis = case.seg == NETC_LABEL
        normal = (case.seg == BACKGROUND_LABEL) & case.brain_mask  # a cortical tumour may touch the brain's edge
        touches_normal = ndimage.binary_dilation(normal) & necrosis
        assert touches_normal.sum() <= 0.05 * max(necrosis.sum(), 20), case.case_id


# ------------------------------------------------------------------------------------------------
# Lesion variety: kinds, sites, sizes, several foci, healthy cases in the mix
# ------------------------------------------------------------------------------------------------

VARIETY_SEED = 3


def test_every_kind_site_and_size_is_drawn_at_its_share() -> None:
    """Over 400 cases (plans only, no drawing) every kind, site region and size class occurs near its share."""
    plans = [lesion_plan(i, VARIETY_SEED) for i in range(400)]
    kinds = Counter(p[0] for p in plans)
    regions = Counter(p[1] for p in plans)
    for kind, share in LESION_KINDS.items():
        assert abs(kinds[kind] / 400 - share) < 0.06, (kind, kinds)
    for region, share in SITE_SHARES.items():
        assert abs(regions[region] / 400 - share) < 0.06, (region, regions)
    multifocal = sum(p[2] > 1 for p in plans) / 400
    assert abs(multifocal - MULTIFOCAL_PROBABILITY) < 0.05
    radii = np.array([p[3] for p in plans])
    assert 0.1 < (radii < 8.0).mean() < 0.3 and 0.04 < (radii > 22.0).mean() < 0.16


def _first_case(predicate: Callable[[tuple[str, str, int, float]], bool]) -> PhantomCase:
    """The first case of :data:`VARIETY_SEED` whose plan satisfies ``predicate``, drawn."""
    index = next(i for i in range(400) if predicate(lesion_plan(i, VARIETY_SEED)))
    return generate_case(index, VARIETY_SEED, "small")


@pytest.fixture(scope="module")
def kinds() -> dict[str, PhantomCase]:
    """One typical-sized case of each kind (its main focus alone), for the label layouts."""
    return {kind: _first_case(lambda p, k=kind: p[0] == k and p[2] == 1 and p[3] > 10.0) for kind in LESION_KINDS}


def test_each_kind_has_its_label_layout(kinds: dict[str, PhantomCase]) -> None:
    volume = {
        kind: {label: int((case.seg == label).sum()) for label in (NETC_LABEL, SNFH_LABEL, ET_LABEL)}
        for kind, case in kinds.items()
    }
    for kind, case in kinds.items():
        assert case.kind == kind and case.foci == 1 and volume[kind][SNFH_LABEL] > 0, case.case_id
    # a necrotic core inside a closed enhancing rim: NETC grown by a voxel stays inside the core
    rim = kinds["necrotic_rim"]
    assert volume["necrotic_rim"][NETC_LABEL] > 0 and volume["necrotic_rim"][ET_LABEL] > 0
    grown = ndimage.binary_dilation(rim.seg == NETC_LABEL)
    assert np.isin(rim.seg[grown], (NETC_LABEL, ET_LABEL)).mean() > 0.9
    # mostly enhancing
    assert volume["solid_enhancing"][ET_LABEL] > volume["solid_enhancing"][NETC_LABEL]
    # patchy enhancement: a minority of the core enhances
    patchy = volume["patchy"]
    assert 0.05 < patchy[ET_LABEL] / (patchy[ET_LABEL] + patchy[NETC_LABEL]) < 0.6
    # a non-enhancing core: NETC without ET, bright on T2 and FLAIR
    solid = kinds["non_enhancing"]
    assert volume["non_enhancing"][ET_LABEL] == 0 and volume["non_enhancing"][NETC_LABEL] > 0
    core = ndimage.binary_erosion(solid.seg == NETC_LABEL)
    assert _mean(solid, "t2f", core) > 1.2 * _mean(solid, "t2f", _normal(solid, "wm"))
    assert _mean(solid, "t2w", core) > 1.4 * _mean(solid, "t2w", _normal(solid, "wm"))
    # a cyst: fluid dark on T1 and darker than the oedema on FLAIR, bright on T2
    cyst = kinds["cystic"]
    fluid = ndimage.binary_erosion(cyst.seg == NETC_LABEL)
    assert _mean(cyst, "t1n", fluid) < 0.6 * _mean(cyst, "t1n", _normal(cyst, "wm"))
    assert _mean(cyst, "t2f", fluid) < _mean(cyst, "t2f", cyst.seg == SNFH_LABEL)
    assert _mean(cyst, "t2w", fluid) > 2.0 * _mean(cyst, "t2w", _normal(cyst, "wm"))


def test_sites_sizes_and_several_foci() -> None:
    """A corpus-callosum tumour crosses the midline, a posterior-fossa one lies low, a small tumour is under 10 mL,
    and a multifocal case has separate cores."""
    callosal = _first_case(lambda p: p[1] == "corpus_callosum" and p[2] == 1 and p[3] > 10.0)
    whole = np.argwhere(callosal.seg > 0)
    midline = np.argwhere(callosal.brain_mask)[:, 0].mean()
    assert whole[:, 0].min() < midline - 3 and whole[:, 0].max() > midline + 3  # both hemispheres (2 mm voxels)
    fossa = _first_case(lambda p: p[1] == "posterior_fossa" and p[2] == 1)
    brain_z = np.argwhere(fossa.brain_mask)[:, 2]
    assert np.argwhere(fossa.seg > 0)[:, 2].mean() < np.percentile(brain_z, 35)
    small = _first_case(lambda p: p[3] < 6.0 and p[2] == 1)
    assert 0 < (small.seg > 0).sum() * 8e-3 < 10.0  # mL at 2 mm voxels
    multifocal = _first_case(lambda p: p[2] == 3)
    assert multifocal.foci == 3
    assert ndimage.label(np.isin(multifocal.seg, (NETC_LABEL, ET_LABEL)))[1] >= 2


def test_healthy_cases_join_the_labelled_mix(tmp_path: Path) -> None:
    share = 0.3
    healthy = [i for i in range(6) if is_healthy_case(SEED, i, share)]
    assert 0 < len(healthy) < 6  # this seed draws some healthy cases and some tumours
    assert set(healthy) <= {i for i in range(6) if is_healthy_case(SEED, i, 0.6)}  # a higher share adds cases
    make_phantom_dataset(tmp_path, 8, seed=SEED, unlabelled=2, workers=2, progress=False, healthy_share=share)
    for i in range(8):
        cid = case_id(PHANTOM_TASK, i)
        seg_path = tmp_path / cid / case_file_name(cid, SEG_SUFFIX)
        if i >= 6:
            assert not seg_path.exists()  # unlabelled cases are tumours without labels, never healthy ones
            continue
        assert np.asarray(nib.load(seg_path).dataobj).any() == (i not in healthy), cid
    with pytest.raises(ValueError, match="healthy_share"):
        make_phantom_dataset(tmp_path / "bad", 1, healthy_share=1.5, progress=False)


# ------------------------------------------------------------------------------------------------
# Contrasts
# ------------------------------------------------------------------------------------------------


def _mean(case: PhantomCase, modality: str, mask: np.ndarray) -> float:
    assert mask.sum() > 20, "too few voxels for a mean"
    return float(case.images[modality][mask].mean())


def _with_necrosis(cases: list[PhantomCase], enhancing: bool | None = None) -> list[PhantomCase]:
    """Cases with enough NETC voxels for a mean (a mostly solid enhancing tumour has almost none)."""
    chosen = [
        c
        for c in cases
        if (c.seg == NETC_LABEL).sum() > 20 and enhancing in (None, bool((c.seg == ET_LABEL).sum() > 20))
    ]
    assert len(chosen) >= 3
    return chosen


def test_t1c_enhancing_tumour_is_bright(cases: list[PhantomCase]) -> None:
    for case in (c for c in cases if (c.seg == ET_LABEL).sum() > 20):
        et = _mean(case, "t1c", case.seg == ET_LABEL)
        # thin rims and patches are partial-volumed; faint enhancement is real (one real scan's ET: median 1.18 x
        # white matter, first quartile 1.11, docs/real_scans.md section 7), and pure white matter is its brightest
        assert et > 1.05 * _mean(case, "t1c", _normal(case, "wm")), case.case_id
        assert et > 1.05 * _mean(case, "t1c", _normal(case, "gm")), case.case_id
    for case in _with_necrosis(cases, enhancing=True):
        assert _mean(case, "t1c", case.seg == ET_LABEL) > 1.2 * _mean(case, "t1c", case.seg == NETC_LABEL)


def test_oedema_is_hyperintense_in_t2_and_flair(cases: list[PhantomCase]) -> None:
    for case in cases:
        oedema, wm = case.seg == SNFH_LABEL, _normal(case, "wm")
        assert _mean(case, "t2f", oedema) > 1.15 * _mean(case, "t2f", wm), case.case_id
        assert _mean(case, "t2w", oedema) > 1.4 * _mean(case, "t2w", wm), case.case_id


def test_tissue_contrasts_follow_mri_physics(cases: list[PhantomCase]) -> None:
    for case in cases:
        wm, gm, csf = (_normal(case, tissue) for tissue in ("wm", "gm", "csf"))
        assert _mean(case, "t2f", csf) < 0.6 * _mean(case, "t2f", wm), case.case_id  # FLAIR: CSF suppressed
        assert _mean(case, "t1n", wm) > _mean(case, "t1n", gm) > _mean(case, "t1n", csf), case.case_id
        assert _mean(case, "t2w", csf) > _mean(case, "t2w", gm) > _mean(case, "t2w", wm), case.case_id
        # FLAIR: grey matter about as bright as white matter (0.9-1.1 on real scans), compared within axial thirds (a
        # bias field darkens the inferior brain, where the cerebellum holds much of the grey matter)
        thirds = np.array_split(np.arange(case.seg.shape[2]), 3)
        ratios = []
        for rows in thirds:
            slab = np.zeros_like(gm)
            slab[:, :, rows] = True
            if (gm & slab).sum() > 100 and (wm & slab).sum() > 100:
                ratios.append(_mean(case, "t2f", gm & slab) / _mean(case, "t2f", wm & slab))
        assert 0.85 < np.mean(ratios) < 1.3, (case.case_id, ratios)
    for case in _with_necrosis(cases):
        assert _mean(case, "t1n", case.seg == NETC_LABEL) < 0.85 * _mean(case, "t1n", _normal(case, "wm"))
        assert _mean(case, "t2w", case.seg == NETC_LABEL) > 1.5 * _mean(case, "t2w", _normal(case, "wm"))


def test_sharpened_fractions_keep_the_brain_share_and_favour_the_main_tissue() -> None:
    """The template's fractions overlap more than one brain's tissues do: sharpening keeps each voxel's brain share
    and its main tissue, gives that tissue more of the voxel, and leaves pure voxels and voxels outside alone."""
    from kd_components.data.phantoms.anatomy import _sharpen

    rng = np.random.default_rng(0)
    fractions = rng.dirichlet((1.0, 1.0, 1.0), size=(6, 5, 4)).astype(np.float32)
    share = rng.uniform(0.5, 1.0, (6, 5, 4)).astype(np.float32)
    csf, gm, wm = (fractions[..., k] * share for k in range(3))
    csf[0, 0, 0], gm[0, 0, 0], wm[0, 0, 0] = 0.0, 0.0, 1.0  # pure white matter
    csf[1, 0, 0] = gm[1, 0, 0] = wm[1, 0, 0] = 0.0  # outside the brain
    sharp = _sharpen(csf, gm, wm)
    before, after = np.stack([csf, gm, wm]), np.stack(sharp)
    assert all(f.dtype == np.float32 for f in sharp)
    np.testing.assert_allclose(after.sum(0), before.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(after.argmax(0), before.argmax(0))
    assert (after.max(0) >= before.max(0) - 1e-6).all() and (after.max(0) > before.max(0) + 0.05).mean() > 0.5
    assert after[:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0] and not after[:, 1, 0, 0].any()


def test_tumour_is_not_one_channel_threshold(cases: list[PhantomCase]) -> None:
    """No single FLAIR threshold separates the whole tumour from the brain perfectly (the task is not trivial; thick
    slices and blur smooth the noise, so some cases come close)."""
    for case in cases:
        values, whole = case.images["t2f"][case.brain_mask], (case.seg > 0)[case.brain_mask]
        best = max(_dice(values > t, whole) for t in np.quantile(values, np.linspace(0.8, 0.999, 60)))
        assert 0.3 < best < 0.98, case.case_id


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------


def _assert_same_case(a: PhantomCase, b: PhantomCase) -> None:
    np.testing.assert_array_equal(a.seg, b.seg)
    for modality in MODALITIES:
        np.testing.assert_array_equal(a.images[modality], b.images[modality])


def test_same_seed_and_index_give_identical_case(cases: list[PhantomCase]) -> None:
    _assert_same_case(generate_case(2, SEED, "small"), cases[2])


def test_other_seed_or_index_give_other_case(cases: list[PhantomCase]) -> None:
    other = generate_case(2, SEED + 1, "small")
    assert not np.array_equal(other.seg, cases[2].seg)
    assert not np.array_equal(other.images["t1n"], cases[2].images["t1n"])
    assert not np.array_equal(cases[2].images["t1n"], cases[3].images["t1n"])


def test_written_cases_equal_cases_generated_alone(cases: list[PhantomCase], dataset: Path) -> None:
    """Case i is the same whether made alone, in a batch of three, or by a pool of two workers."""
    for case in cases[:3]:
        folder = dataset / case.case_id
        for modality in MODALITIES:
            stored = nib.load(folder / case_file_name(case.case_id, modality)).get_fdata()
            np.testing.assert_array_equal(stored, case.images[modality])
    labelled = cases[0]
    stored_seg = nib.load(dataset / labelled.case_id / case_file_name(labelled.case_id, SEG_SUFFIX)).get_fdata()
    np.testing.assert_array_equal(stored_seg, labelled.seg)


# ------------------------------------------------------------------------------------------------
# Files, CLI, preview
# ------------------------------------------------------------------------------------------------


def test_dataset_layout_with_unlabelled_cases(dataset: Path) -> None:
    ids = [case_id(PHANTOM_TASK, i) for i in range(3)]
    assert sorted(p.name for p in dataset.iterdir()) == ids
    for position, cid in enumerate(ids):
        folder = dataset / cid
        images = [nib.load(folder / case_file_name(cid, m)) for m in MODALITIES]
        seg_path = folder / case_file_name(cid, SEG_SUFFIX)
        assert seg_path.exists() == (position < 2)  # the last case is unlabelled
        volumes = [*images, nib.load(seg_path)] if seg_path.exists() else images
        for volume in volumes:
            assert volume.shape == PROFILES["small"].shape
            np.testing.assert_allclose(volume.affine, PROFILES["small"].affine)
        assert all(img.get_data_dtype() == np.int16 for img in images)
        if seg_path.exists():
            assert nib.load(seg_path).get_data_dtype() == np.uint8


def test_cli_writes_cases_and_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--output-dir", str(tmp_path), "--num-cases", "2", "--seed", "5", "--unlabelled", "1"]
    assert brats_kd("phantoms", *args, "--workers", "1", "--preview", "--no-progress") == 0
    out = capsys.readouterr().out
    assert "1 labelled, 1 unlabelled" in out and str(tmp_path) in out
    png = tmp_path / "preview.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / case_id(PHANTOM_TASK, 1) / case_file_name(case_id(PHANTOM_TASK, 1), SEG_SUFFIX)).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--profile", "huge"], "invalid choice: 'huge'"), (["--unlabelled", "2"], "cannot exceed num_cases")],
)
def test_cli_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert brats_kd("phantoms", "--output-dir", str(tmp_path), "--num-cases", "1", "--no-progress", *extra) == 2
    assert message in capsys.readouterr().err


def test_preview_selects_cases_and_rejects_empty_folders(dataset: Path, tmp_path: Path) -> None:
    png = save_preview(dataset, tmp_path / "one.png", case_ids=[case_id(PHANTOM_TASK, 2)])
    assert png.stat().st_size > 5_000
    with pytest.raises(ValueError, match="no BraTS"):
        save_preview(tmp_path, tmp_path / "none.png")
    with pytest.raises(ValueError, match="not found"):
        save_preview(dataset, tmp_path / "none.png", case_ids=["BraTS-SYN-99999-000"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_cases": -1}, "num_cases"),
        ({"num_cases": 2, "unlabelled": 3}, "unlabelled"),
        ({"num_cases": 2, "unlabelled": -1}, "unlabelled"),
        ({"num_cases": 2, "seed": -3}, "seed"),
        ({"num_cases": 2, "workers": 0}, "workers"),
        ({"num_cases": 2, "profile": "huge"}, "known profiles"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_phantom_dataset(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_generate_case_rejects_negative_index() -> None:
    with pytest.raises(ValueError, match="index"):
        generate_case(-1, SEED)


def test_generated_tree_passes_validation_and_loads_with_monai(dataset: Path, tmp_path: Path) -> None:
    """The phantoms are what the data layer expects: valid cases, a datalist, MONAI's LoadImaged."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from kd_components.data.brats import discover_cases, validate_cases
    from kd_components.data.datalist import build_datalist, load_datalist_split
    from kd_components.io import save_json_atomic
    from kd_components.transforms import BratsLabelsToRegionsd

    reports = validate_cases(discover_cases(dataset), workers=1)
    assert [r.case.case_id for r in reports] == [case_id(PHANTOM_TASK, i) for i in range(3)]
    assert all(r.ok for r in reports), [str(p) for r in reports for p in r.problems]
    datalist = build_datalist(reports, dataset, num_folds=2)
    assert datalist["numTraining"] == 2 and datalist["numTest"] == 1
    path = tmp_path / "datalist.json"
    save_json_atomic(datalist, path)
    item = load_datalist_split(path, dataset, "validation", fold=0)[0]
    loader = Compose(
        [LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]), BratsLabelsToRegionsd("label")]
    )
    data = loader(item)
    assert tuple(data["image"].shape) == (len(MODALITIES), *PROFILES["small"].shape)
    assert tuple(data["label"].shape) == (3, *PROFILES["small"].shape)
    assert data["label"][1].sum() > 0  # whole tumour present
    np.testing.assert_allclose(data["image"].affine.numpy(), PROFILES["small"].affine, atol=1e-5)


def test_a_healthy_phantom_is_the_same_brain_without_the_tumour(cases: list[PhantomCase], tmp_path: Path) -> None:
    tumour = cases[0]
    index = int(tumour.case_id.split("-")[2])
    healthy = generate_case(index, SEED, "small", healthy=True)
    assert healthy.case_id == tumour.case_id and not healthy.seg.any()
    assert (healthy.brain_mask == tumour.brain_mask).mean() > 0.99  # the same pose; no mass effect
    outside = ~ndimage.binary_dilation(tumour.seg > 0, iterations=8) & healthy.brain_mask
    t2f_h, t2f_t = healthy.images["t2f"].astype(float), tumour.images["t2f"].astype(float)
    assert abs(t2f_h[outside].mean() / t2f_t[outside].mean() - 1) < 0.05  # the same contrasts away from the tumour
    assert np.array_equal(generate_case(index, SEED, "small", healthy=True).images["t1c"], healthy.images["t1c"])
    ids = make_phantom_dataset(tmp_path, 1, seed=SEED, healthy=True, workers=1, progress=False)
    seg = nib.load(tmp_path / ids[0] / case_file_name(ids[0], "seg"))
    assert not np.asarray(seg.dataobj).any()


def test_normal_anatomy_varies_between_cases() -> None:
    """Ventricles (deep CSF), sulci (all CSF) and grey matter differ from brain to brain, not only by pose."""
    deep_csf, csf, gm = [], [], []
    for index in range(6):
        case = generate_case(index, 902, "small", healthy=True)
        depth = ndimage.distance_transform_edt(case.brain_mask) * 2.0  # mm at 2 mm voxels
        deep_csf.append(((case.tissues["csf"] > 0.5) & (depth > 16)).sum())
        csf.append(case.tissues["csf"].sum())
        gm.append(case.tissues["gm"].sum())
    assert max(deep_csf) > 1.5 * min(deep_csf)  # ventricles from small to enlarged
    assert max(csf) > 1.3 * min(csf) and max(gm) > 1.15 * min(gm)  # sulcal widening, cortical thickness


@pytest.fixture(scope="module")
def calibration_phantoms() -> list[PhantomCase]:
    """Six phantoms of seed 100 (2 mm), measured against the real scans' calibration."""
    return [generate_case(index, 100, "small") for index in range(6)]


def _recorded_real_cases() -> dict[str, dict]:
    """The real scans' calibration per case, as ``scripts/measure_real_scans.py --calibration`` recorded it."""
    import json

    return json.loads((REPO_ROOT / "docs" / "real_scans_calibration.json").read_text())["real"]["cases"]


def test_phantom_intensities_fall_in_the_real_scans_ranges(calibration_phantoms: list[PhantomCase]) -> None:
    """Measured as on real scans (``kd_lab.calibration``: k-means tissue classes, values over the white-matter
    median), every tumour class and grey matter of six phantoms has its pooled median inside the range of the real
    scans' per-case medians recorded in docs/real_scans_calibration.json, widened by 20 % (three real cases span
    little of the variety of real gliomas; the phantoms are 2 mm here, the real scans 1 mm). Not CSF: the
    phantoms' CSF is purer than the real scans' partial-volume mixture (docs/real_scans.md, section 3.5)."""
    from kd_lab.calibration import measure_case, pool_cases

    recorded = _recorded_real_cases()
    measured = []
    for case in calibration_phantoms:
        images = {m: case.images[m].astype(np.float32) for m in MODALITIES}
        measured.append(measure_case(case.case_id, images, case.seg, (2.0, 2.0, 2.0), tumour_margin=2))
    pooled = pool_cases(measured)
    outside = []
    for modality in MODALITIES:
        for name in ("GM", "NETC", "SNFH", "ET"):
            real = [c["stats"][modality][name]["median"] for c in recorded.values() if name in c["stats"][modality]]
            low, high = min(real) / 1.2, max(real) * 1.2
            value = pooled[modality][name]["median"]
            if not low <= value <= high:
                outside.append(f"{modality} {name}: {value:.2f} not in [{low:.2f}, {high:.2f}]")
    assert not outside, outside


def test_t1c_shows_vessels_and_dura_as_bright_as_real_scans_do(calibration_phantoms: list[PhantomCase]) -> None:
    """t1c's enhancing normal structures (``kd_lab.calibration.normal_enhancement``): over the six phantoms, the
    upper tail of ``t1c - t1n`` away from the tumour and t1c's brightest voxels at the brain's edge lie in the range
    of the real scans recorded in docs/real_scans_calibration.json, widened by 20 %, and t1c's brightest voxels
    inside the brain are above t1n's, as on every real scan. With vessels and dura half as bright (the generator
    before its calibration) t1c's brightest inner voxels were below t1n's."""
    from kd_lab.calibration import normal_enhancement

    real = [case["enhancement"] for case in _recorded_real_cases().values()]
    assert all(entry["inner_lead"] > 0 for entry in real)
    measured = [normal_enhancement(case.images, case.seg, (2.0, 2.0, 2.0)) for case in calibration_phantoms]
    for key in ("upper", "edge"):
        low, high = min(e[key] for e in real) / 1.2, max(e[key] for e in real) * 1.2
        assert low <= np.mean([m[key] for m in measured]) <= high, (key, measured)
    assert np.mean([m["inner_lead"] for m in measured]) > 0, measured
