"""``docs/architecture.md`` against the code: the files it names exist, the names its module table lists are in
those modules, and the config expressions its recipes quote are the ones the bundles use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "architecture.md"
#: Repository paths as the page writes them (a folder ends with "/"); brace lists like {a,b}.json are not paths.
PATH = re.compile(r"`((?:kd_components|kd_lab|scripts|tests|deploy|bundles)/[\w./-]*)`")
IDENTIFIER = re.compile(r"^[A-Za-z_]\w{3,}$")


def _table_rows() -> list[tuple[list[Path], list[str]]]:
    """The module table: per row, the files of its first cell and the backticked names of its second."""
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`kd_") or cells[0].startswith("`kd_components/cli"):
            continue
        named = re.findall(r"`([^`]+)`", cells[0])
        first = REPO_ROOT / named[0]
        folder = first if named[0].endswith("/") else first.parent
        files = [first] + [folder / name for name in named[1:]]
        sources = [p for f in files for p in ([f] if f.is_file() else sorted(f.rglob("*.py")))]
        names = [n for n in re.findall(r"`([^`]+)`", cells[1]) if IDENTIFIER.match(n) and not n.endswith("_py")]
        rows.append((sources, names))
    return rows


def test_every_path_the_page_names_exists() -> None:
    missing = sorted({p for p in PATH.findall(DOC.read_text()) if not (REPO_ROOT / p).exists()})
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_the_module_table_names_what_its_modules_hold() -> None:
    rows = _table_rows()
    assert len(rows) > 15  # the table was found
    absent = []
    for sources, names in rows:
        text = "\n".join(p.read_text() for p in sources)
        absent += [
            f"{name} (in {[str(p.relative_to(REPO_ROOT)) for p in sources][:3]})"
            for name in names
            if not re.search(rf"\b{name}\b", text)
        ]
    assert not absent, f"docs/architecture.md's module table names what its modules do not hold: {absent}"


def test_the_recipes_quote_the_bundles_expressions() -> None:
    """A ``$function(@...)`` expression in the page is the bundles' own, argument for argument."""
    configs = "\n".join(p.read_text() for p in (REPO_ROOT / "bundles").rglob("*.json"))
    quoted = re.findall(r"`(\$\w+\(@[^`]*\))`", DOC.read_text())
    assert quoted
    assert [q for q in quoted if q not in configs] == []


@pytest.mark.parametrize("stale", ["`bundle_postprocess_settings` reads", "`$feature_pairs(@network_def)`"])
def test_the_checks_catch_what_the_page_used_to_say(
    stale: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's former errors (a removed function in the table, an old signature in a recipe) fail the checks."""
    page = tmp_path / "architecture.md"
    text = DOC.read_text()
    if stale.startswith("`bundle"):
        text = text.replace("`PostprocessSettings`, the thresholds", f"{stale} the thresholds", 1)
        check = test_the_module_table_names_what_its_modules_hold
    else:
        text += f"\n{stale}\n"
        check = test_the_recipes_quote_the_bundles_expressions
    page.write_text(text)
    monkeypatch.setattr(f"{__name__}.DOC", page)
    with pytest.raises(AssertionError):
        check()
