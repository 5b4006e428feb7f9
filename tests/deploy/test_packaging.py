"""Every third-party import of a package is installed by the extra that installs the package.

Why: `pft reproduce` imported matplotlib, which only the `dev` extra installed, so a `science`
install failed where the developers' never did (issue 12). This reads every import of every
non-test module (lazy ones too, with the collector of ``tests/test_architecture.py``) and
checks it against the requirements of the package's extra, followed transitively through the
installed distributions' metadata (``PIL`` comes with torchvision's ``pillow``).
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.test_architecture import PACKAGES, imports

ROOT = Path(__file__).resolve().parents[2]
# The extras a package's users install with it (`pip install '.[EXTRA]'`); "" is the core.
EXTRAS = {
    "contract": ("",),
    "pft": ("", "science"),
    "backend": ("", "api"),
    "worker": ("", "worker"),
    "dashboard": ("", "dashboard"),
    "lab": ("", "lab"),
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extra: str) -> list[Requirement]:
    """What an extra ("": the core) requires, its self-references (``pft-lab[a,b]``) followed."""
    project, out, todo, seen = _project(), [], [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        texts = project["dependencies"] if name == "" else project["optional-dependencies"][name]
        for req in map(Requirement, texts):
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if _norm(req.name) == "pft-lab":
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


def _direct(extra: str) -> set[str]:
    return {_norm(r.name) for r in _requirements(extra)}


@cache
def _closure(extras: tuple[str, ...]) -> frozenset[str]:
    """The extras' distributions and everything they require (with the extras they ask of
    each other: ``uvicorn[standard]``), from the installed distributions' metadata."""
    out: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [r for e in extras for r in _requirements(e)]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        out.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        envs = [{"extra": e} for e in ("", *sorted(req.extras))]
        for sub in map(Requirement, requires):
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return frozenset(out)


@cache
def _providers() -> dict[str, list[str]]:
    return {k: [_norm(d) for d in v] for k, v in metadata.packages_distributions().items()}


def test_every_package_has_its_extras() -> None:
    assert set(EXTRAS) == set(PACKAGES)
    for extras in EXTRAS.values():
        for extra in extras:
            assert extra == "" or extra in _project()["optional-dependencies"], extra


@pytest.mark.parametrize("package", PACKAGES)
def test_third_party_imports_come_with_the_packages_extra(package: str) -> None:
    installed = _closure(EXTRAS[package])
    ours = set(PACKAGES)
    missing = []
    for imp in imports():
        if imp.source.split(".")[0] != package or imp.typing_only:
            continue
        top = imp.top
        if top in ours or top in sys.stdlib_module_names or top == "__future__":
            continue
        providers = _providers().get(top)
        if providers is None:
            missing.append(f"{imp.source}:{imp.line} imports {top}, which nothing here installs")
        elif not set(providers) & installed:
            missing.append(
                f"{imp.source}:{imp.line} imports {top} ({', '.join(providers)}), not in "
                f"{' + '.join(e or 'core' for e in EXTRAS[package])}"
            )
    assert not missing, "\n".join(sorted(set(missing)))


def test_the_reproduction_study_needs_only_the_science_extra() -> None:
    # The README advertises `pft reproduce` on `pip install '.[science]'`.
    assert "matplotlib" in _direct("science")
    assert "matplotlib" not in _direct("dev") - _direct("lab")
