"""A Plotly parallel-coordinates figure whose brushes come back to Python.

``st.plotly_chart(on_select=...)`` reports box and lasso selections, not the constraint ranges
of a ``parcoords`` trace, so this is a small custom component (``streamlit.components.v1``):
``parcoords/index.html`` draws the figure with plotly.js and, each time a brush ends, sends the
brushed ranges back as the component's value, ``{axis label: [[low, high], ...]}`` (axes
without a brush left out; in the axis' own units, e.g. log10 of a learning rate).

plotly.js is the one inside the installed ``plotly`` package (``package_data/plotly.min.js``,
about 5 MB, too big to commit twice): the page and a copy of it are put into a folder of the
user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``, else the temporary folder) named after their
contents, and the component is declared from there. Nothing comes from the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
import streamlit.components.v1 as components

PAGE = Path(__file__).with_name("parcoords") / "index.html"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
NAME = "parcoords"


def _cache_roots() -> list[Path]:
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return [
        Path(home) / "pft-lab" / "components",
        Path(tempfile.gettempdir()) / "pft-lab-components",
    ]


def build_folder(roots: list[Path] | None = None) -> Path:
    """The folder the component is served from: the page and plotly.js, copied once per
    version of either (the folder's name is their digest; a half-written copy never shows,
    it is renamed into place)."""
    page = PAGE.read_bytes()
    digest = hashlib.sha256(page + f"{plotly.__version__}:{PLOTLY_JS.stat().st_size}".encode())
    name = f"{NAME}-{digest.hexdigest()[:16]}"
    problems = []
    for root in roots or _cache_roots():
        target = root / name
        if (target / "index.html").is_file() and (target / "plotly.min.js").is_file():
            return target
        try:
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
            shutil.copyfile(PLOTLY_JS, work / "plotly.min.js")
            (work / "index.html").write_bytes(page)
            try:
                work.rename(target)
            except OSError:  # another process put it there first
                shutil.rmtree(work, ignore_errors=True)
            return target
        except OSError as exc:
            problems.append(f"{root}: {exc}")
    raise OSError("cannot prepare the parallel-coordinates component: " + "; ".join(problems))


@cache
def _component() -> Any:
    return components.declare_component(NAME, path=str(build_folder()))


def parcoords_brush(figure: go.Figure, *, key: str) -> dict[str, list[list[float]]]:
    """Draws ``figure`` (one ``parcoords`` trace) and returns its brushed ranges (see module)."""
    value = _component()(figure=figure.to_json(), key=key, default=None)
    return value if isinstance(value, dict) else {}
