#!/usr/bin/env python
"""The plausibility checks on phantoms and real scans: how many cases pass as given, and on how many each swap of two
modalities is caught (kd_lab/plausibility_survey.py). Prints a Markdown table.

    python scripts/measure_plausibility.py                                    # the default sets below
    python scripts/measure_plausibility.py --phantoms small:0:40 brats:100:8 --at-2mm brats:100:8 \\
        --real ../shared/real_dev

``--phantoms PROFILE:SEED:COUNT`` checks phantoms as generated; ``--at-2mm`` names sets (``real`` or a phantom set)
also checked resampled to 2 mm and z-scored, as the demo bundles see them. The real scans default to
../shared/real_dev beside the repository; where it is absent the table has phantoms only and says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from kd_components.data.phantoms.grid import PROFILES
from kd_lab.plausibility_survey import PAIRS, Case, SurveyRow, at_2mm, phantom_images, real_images, survey
from kd_lab.real_scans import DEFAULT_REAL_SCANS, NoRealScansError, labelled_cases


def _phantom_set(text: str) -> tuple[str, int, int]:
    try:
        profile, seed, count = text.split(":")
        parsed = profile, int(seed), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PROFILE:SEED:COUNT, e.g. small:0:40") from None
    if profile not in PROFILES:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown phantom profile {profile!r} (known: {sorted(PROFILES)})")
    return parsed


def _resampled(images: Iterable[Case]) -> Iterator[Case]:
    for case_id, image, affine in images:
        yield (case_id, *at_2mm(image, affine))


def _table(rows: list[SurveyRow]) -> str:
    head = "| set | cases | pass as given | " + " | ".join(f"{a}/{b} swap caught" for a, b in PAIRS) + " |"
    lines = [head, "|---|" + "---:|" * (2 + len(PAIRS))]
    for row in rows:
        caught = " | ".join(str(row.caught[p]) for p in PAIRS)
        lines.append(f"| {row.name} | {row.cases} | {row.passed} | {caught} |")
    refused = [f"- {row.name}: refused as given: {', '.join(row.refused)}" for row in rows if row.refused]
    return "\n".join(lines + (["", *refused] if refused else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--phantoms",
        type=_phantom_set,
        nargs="*",
        default=[("small", 0, 100), ("small", 7, 40), ("brats", 100, 10)],
        help="phantom sets PROFILE:SEED:COUNT (default: small:0:100 small:7:40 brats:100:10)",
    )
    parser.add_argument(
        "--at-2mm", nargs="*", default=["real", "brats:100:10"], help="sets also checked at 2 mm, z-scored"
    )
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL_SCANS, help="a folder of labelled BraTS cases")
    args = parser.parse_args(argv)
    rows: list[SurveyRow] = []
    try:
        cases = labelled_cases(args.real)
    except NoRealScansError as err:
        print(f"no real scans: {err}", file=sys.stderr)
        cases = []
    if cases:
        rows.append(survey(f"real ({args.real.name})", real_images(cases)))
        if "real" in args.at_2mm:
            rows.append(survey(f"real ({args.real.name}), 2 mm", _resampled(real_images(cases))))
    for profile, seed, count in args.phantoms:
        name = f"{profile}:{seed}:{count}"
        rows.append(survey(f"phantoms {name}", phantom_images(profile, seed, count)))
        if name in args.at_2mm:
            rows.append(survey(f"phantoms {name}, 2 mm", _resampled(phantom_images(profile, seed, count))))
        print(f"{rows[-1].name}: done", file=sys.stderr, flush=True)
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
