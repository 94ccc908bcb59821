"""The one home of the BraTS conventions: channel order, label values and regions.

Everything else (code, tests and bundle configs) imports these names instead of
repeating the literals.
"""

from __future__ import annotations

import re

#: Input channel order of every network: ``[t1c, t1n, t2w, t2f]`` (BraTS-2023 file suffixes).
MODALITIES: tuple[str, ...] = ("t1c", "t1n", "t2w", "t2f")
#: File suffix of the segmentation in a BraTS-2023 case folder.
SEG_SUFFIX: str = "seg"
#: Accepted NIfTI file extensions, most common first.
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

#: Output channel order of every network: three sigmoid channels.
REGIONS: tuple[str, ...] = ("TC", "WT", "ET")

#: BraTS label values (BraTS-2023 convention).
BACKGROUND_LABEL: int = 0
NETC_LABEL: int = 1  #: non-enhancing / necrotic tumour core (TC minus ET)
SNFH_LABEL: int = 2  #: surrounding non-enhancing FLAIR hyperintensity, i.e. oedema (WT minus TC)
ET_LABEL: int = 3  #: enhancing tumour, BraTS 2023
LEGACY_ET_LABEL: int = 4  #: enhancing tumour in BraTS 2018-2022 and MONAI's defaults
LABEL_NAMES: dict[int, str] = {BACKGROUND_LABEL: "background", NETC_LABEL: "NETC", SNFH_LABEL: "SNFH", ET_LABEL: "ET"}


#: HD95 (mm) given to a region, or a lesion, that one of the two maps has and the other misses entirely: the
#: diagonal of BraTS's 240 x 240 x 155 grid at 1 mm (sqrt(240^2 + 240^2 + 155^2) = 373.13). The BraTS evaluators
#: write it rounded: 373 (``brats-evaluation``, "diameter of the cube in SRI space") or 374 (the BraTS 2023
#: lesion-wise script).
MISSED_REGION_HD_MM: float = 373.13

#: The regions the BraTS evaluation scores, each as the BraTS-2023 labels it unites: the three overlapping
#: regions of the networks' outputs and the two labels that are not a region by themselves (ET is both).
EVALUATION_REGIONS: dict[str, tuple[int, ...]] = {
    "TC": (NETC_LABEL, ET_LABEL),
    "WT": (NETC_LABEL, SNFH_LABEL, ET_LABEL),
    "ET": (ET_LABEL,),
    "NETC": (NETC_LABEL,),
    "SNFH": (SNFH_LABEL,),
}


def allowed_labels(et_label: int = ET_LABEL) -> frozenset[int]:
    """The label values a segmentation may contain when ET is marked with ``et_label`` (3 or 4)."""
    if et_label not in (ET_LABEL, LEGACY_ET_LABEL):
        raise ValueError(
            f"et_label must be {ET_LABEL} (BraTS 2023) or {LEGACY_ET_LABEL} (BraTS 2018-2022), got {et_label}"
        )
    return frozenset({BACKGROUND_LABEL, NETC_LABEL, SNFH_LABEL, et_label})


#: BraTS-2023 task prefixes, and ``SYN`` for the phantoms this project generates.
TASK_PREFIXES: tuple[str, ...] = ("GLI", "MEN", "MET", "PED", "SSA", "SYN")
#: Task prefix of the synthetic phantoms.
PHANTOM_TASK: str = "SYN"
#: A BraTS-2023 case id: ``BraTS-<TASK>-<5 digits>-<3 digits>``, e.g. ``BraTS-GLI-00000-000``.
CASE_ID_PATTERN: re.Pattern[str] = re.compile(
    r"^BraTS-(?P<task>" + "|".join(TASK_PREFIXES) + r")-(?P<subject>\d{5})-(?P<timepoint>\d{3})$"
)


def case_id(task: str, subject: int, timepoint: int = 0) -> str:
    """Format a BraTS-2023 case id, e.g. ``case_id("SYN", 7) == "BraTS-SYN-00007-000"``."""
    if task not in TASK_PREFIXES:
        raise ValueError(f"unknown BraTS task prefix {task!r}; expected one of {TASK_PREFIXES}")
    return f"BraTS-{task}-{subject:05d}-{timepoint:03d}"


def case_file_name(cid: str, suffix: str, extension: str = ".nii.gz") -> str:
    """File name of one volume of a case: ``<case_id>-<suffix><extension>`` (suffix: a modality or ``seg``)."""
    return f"{cid}-{suffix}{extension}"


#: How a BraTS-2023 case id is written, for messages about folders that are not taken as cases.
CASE_ID_FORMAT: str = (
    "BraTS-<TASK>-<5 digits>-<3 digits> with TASK one of " + ", ".join(TASK_PREFIXES) + ", e.g. BraTS-GLI-00000-000"
)
#: A BraTS case id anywhere inside a longer name (``"BraTS-GLI-00001-000 (copy)"``), in any letter case; ASCII
#: digits only.
CASE_ID_SEARCH: re.Pattern[str] = re.compile(
    r"BraTS-(?P<task>" + "|".join(TASK_PREFIXES) + r")-(?P<subject>[0-9]{5})-(?P<timepoint>[0-9]{3})",
    re.IGNORECASE | re.ASCII,
)


def match_case_id(name: str) -> re.Match[str] | None:
    """``name`` as a whole as a BraTS case id in any letter case (``brats-gli-00001-000`` too), else ``None``.

    Folder and file names are matched this way; :data:`CASE_ID_PATTERN` is the canonical spelling. A name with
    anything around the id (a trailing space or newline, `` (copy)``) does not match.
    """
    return CASE_ID_SEARCH.fullmatch(name)


#: File-name suffixes that name a modality (``...-t1c.nii.gz``, ``..._flair.nii.gz``): the BraTS-2023 suffixes and
#: the BraTS 2017-2021 ones (``t1ce``, ``t1``, ``t2``, ``flair``), each mapped to its BraTS-2023 name.
MODALITY_SUFFIXES: dict[str, str] = {
    **{m: m for m in MODALITIES},
    "t1ce": "t1c",
    "t1": "t1n",
    "t2": "t2w",
    "flair": "t2f",
}
_MODALITY_IN_NAME = re.compile(
    r"(?:^|[-_.])(?P<suffix>" + "|".join(sorted(MODALITY_SUFFIXES, key=len, reverse=True)) + r")\.nii(?:\.gz)?$",
    re.IGNORECASE,
)


def modality_of_file(name: str) -> str | None:
    """The modality a NIfTI file's name says it holds (``BraTS-GLI-00000-000-T1C.nii.gz -> "t1c"``,
    ``BraTS2021_00000_flair.nii.gz -> "t2f"``, ``patient1/t2w.nii.gz -> "t2w"``), or ``None`` when the name
    carries no modality suffix (``a.nii.gz``)."""
    match = _MODALITY_IN_NAME.search(name.rsplit("/", 1)[-1])
    return MODALITY_SUFFIXES[match["suffix"].lower()] if match else None


#: Largest image intensity accepted (absolute value, after NIfTI scaling, as float32). float32 ends at about
#: 3.4e38; z-scoring a volume sums its voxels in float32, which for a 240x240x155 scan overflows from about 1e32,
#: and more voxels lower that. 1e20 leaves room for 1e18 voxels and is far above any real MR intensity.
MAX_ABS_INTENSITY: float = 1e20
