"""BraTS-2023-format brain-tumour phantoms built from the MNI152 template shipped with nilearn.

Real BraTS data cannot be downloaded here, so the project's default data set is synthetic:
each case is the MNI152 brain (T1 template and grey/white-matter/brain probability maps,
loaded offline from nilearn) resampled into a BraTS grid with a small random pose, pushed
aside by a simulated glioma (mass effect), and rendered in the four BraTS contrasts with randomised
tissue levels.

Anatomy
    The MNI brain is placed in the profile's grid with a random rotation (a few degrees per
    axis), a random scale (about +-5 %) and a shift of a few millimetres; its x/y extent is
    centred in the field of view and the top of the brain sits a few millimetres below the
    top of the grid (the MNI brain is 155 mm tall, so the lower brainstem may be cropped,
    as in real BraTS scans). Tissue fractions are partial-volume maps: CSF is the brain mask
    minus grey and white matter, ventricles included. Every modality is exactly 0 outside
    the brain mask (skull-stripped) and at least 1 inside it, so all four channels share
    one support.

Normal variation (so that a network does not learn one brain)
    Each case's brain differs from the average MNI brain: the lateral ventricles grow or shrink
    (a radial push around them: small in young brains, enlarged in 45 % of cases, up to
    hydrocephalic in 10 %), the cerebellum shrinks or grows, grey matter beside CSF turns into
    CSF (sulcal widening, atrophy), the grey/white border moves (cortical thickness), the whole
    template is warped by a smooth random displacement of 1-4 mm, and the cerebellum and
    brainstem get their own signal level and texture. ``healthy=True`` makes the same brain
    without the tumour (no lesion, no mass effect, an all-zero label map), for measuring false
    positives.

Tumour (kinds, sites, sizes: :mod:`~kd_components.data.phantoms.lesion`)
    Each glioma is one main focus (which pushes the anatomy aside) and, in 14 % of cases, one or two small
    satellite foci (multifocal). Its core is an irregular region (an ellipsoidal distance field whose radius is
    modulated by smoothed random noise) inside oedema SNFH (label 2) that reaches further along white matter than
    into grey matter and stays out of CSF. The core's kind sets its labels:

    ===============  =====  =================================================================
    kind             share  core
    ===============  =====  =================================================================
    necrotic_rim     38 %   necrosis (NETC) in a closed enhancing rim (ET) 1.5-7 mm thick
    solid_enhancing   8 %   mostly ET, little necrosis
    patchy           16 %   solid non-enhancing tumour (NETC) with 12-40 % patchy/nodular ET
    non_enhancing    26 %   solid non-enhancing tumour only, bright on T2 and FLAIR, no ET
    cystic           12 %   a fluid cyst (NETC) in a thin wall that enhances in part or not at all
    ===============  =====  =================================================================

    Sites: deep white matter (48 %), the cortex (18 %, reaching the brain's surface), the temporal lobe and
    insula (16 %), the corpus callosum (8 %, a butterfly lesion across the midline) and the posterior fossa
    (10 %). Sizes: core radius 3.5-8 mm (18 %, mostly under 10 mL in all), 8-22 mm, or 22-32 mm (10 %, very
    large). 15 % of tumours (35 % of non-enhancing ones) have little oedema. ``make_phantom_dataset(...,
    healthy_share=p)`` makes a share of the labelled cases healthy brains with all-zero label maps.

Contrasts (SynthSeg-like randomisation around priors fitted to real scans; ``contrast``)
    Each case draws every tissue's level (relative to normal white matter = 1) from its range in
    :data:`~kd_components.data.phantoms.contrast.CONTRAST_PRIORS`, then restores the orderings that define the
    classes: ET clearly brighter than every other tissue on t1c; solid non-enhancing tumour darker than oedema on
    t1n and brighter on t2w; cyst fluid darker than oedema on FLAIR; CSF darker than grey matter on T1 and FLAIR.
    NETC is rendered as three tissues (necrosis, solid tumour, cyst fluid); non-enhancing tissue has about its
    t1n level on t1c. The ranges were fitted to the medians and spread measured on real glioma scans
    (``scripts/measure_real_scans.py --calibration``, docs/real_scans.md).

    T1-weighted images borrow the MNI T1 template's texture (deep grey nuclei, cortex)
    beyond what the tissue fractions explain; T2-weighted ones get the inverse of it.
    Oedema fades by up to 25 % towards its outer edge; each lesion class has its own heterogeneous texture
    (4-20 %, cyst fluid 1-5 %) and soft, partial-volume edges (0.4-1.2 mm). t1c also has enhancing normal
    structures (vessels in sulci, dural remnants along parts of the brain's edge), as bright as on the real scans
    (``contrast.VESSEL_GAIN``, ``contrast.DURA_GAIN``), so ET is not simply "the bright voxels of t1c". Each
    modality then gets a random gamma (0.8-1.25), a blur (0.3-0.9 mm, and in 40 % of scans 2-5 mm thick slices
    along one axis, mostly the axial one), a smooth multiplicative bias field (up to 25 %), a random global scale
    (white matter at about 300-1000) and Rician noise.

Modules
    ``grid`` (output grids), ``atlas`` (the MNI template), ``anatomy`` (pose, normal variation,
    resampling), ``lesion`` (the glioma's parameters and drawing), ``fields`` (smooth random
    fields), ``contrast`` (tissue levels and scanner effects), ``dataset`` (cases and data sets).

Storage
    Images are ``int16`` scanner-like values (0 outside the brain, about 1..3500 inside);
    the segmentation is ``uint8`` with the BraTS-2023 labels from :mod:`kd_components.constants`.

Grid and affine
    ``brats``: 240 x 240 x 155 voxels of 1 mm, the BraTS grid. ``small``: 120 x 120 x 78
    voxels of 2 mm, the same field of view. The affine has BraTS' form: direction
    ``diag(-1, -1, 1)`` times the spacing (voxel axes point to patient Left, Posterior,
    Superior: LPS), with the origin of real BraTS-2023 files, ``(0, 239, 0)`` mm, moved by
    half a voxel minus half a millimetre so coarser grids cover the same field of view:
    ``affine = [[-s, 0, 0, -(s-1)/2], [0, -s, 0, 239-(s-1)/2], [0, 0, s, (s-1)/2], [0, 0, 0, 1]]``.

Determinism
    Case ``i`` of seed ``s`` depends only on ``(s, i)`` and the profile: its random numbers
    come from ``np.random.default_rng([s, i])``, independent of how many cases are made and
    of the number of worker processes.
"""

from __future__ import annotations

from kd_components.data.phantoms.contrast import CONTRAST_PRIORS, GAMMA_RANGE, T1_TEXTURE_WEIGHT, WM_LEVEL_RANGE
from kd_components.data.phantoms.dataset import (
    PhantomCase,
    generate_case,
    is_healthy_case,
    lesion_plan,
    make_phantom_dataset,
    write_case,
)
from kd_components.data.phantoms.grid import PROFILES, PhantomProfile, resolve_profile
from kd_components.data.phantoms.lesion import (
    LESION_CLASSES,
    LESION_KINDS,
    LITTLE_OEDEMA_PROBABILITY,
    MULTIFOCAL_PROBABILITY,
    SITE_SHARES,
)

__all__ = [
    "CONTRAST_PRIORS",
    "GAMMA_RANGE",
    "LESION_CLASSES",
    "LESION_KINDS",
    "LITTLE_OEDEMA_PROBABILITY",
    "MULTIFOCAL_PROBABILITY",
    "PROFILES",
    "SITE_SHARES",
    "T1_TEXTURE_WEIGHT",
    "WM_LEVEL_RANGE",
    "PhantomCase",
    "PhantomProfile",
    "generate_case",
    "is_healthy_case",
    "lesion_plan",
    "make_phantom_dataset",
    "resolve_profile",
    "write_case",
]
