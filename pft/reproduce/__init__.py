"""The reproduction study of Ye et al. (arXiv 2312.15681) on the built-in backbone.

`plan` (presets and runs), `executor` (resumable execution), `souping` (soup evaluation),
`results` (records on disk, held-out choices), `analysis` and `stats` (tables, verdicts),
`figures`, `report`, `estimate` (time) and `pipeline` (all of it: ``pft reproduce``).
"""

from pft.reproduce.plan import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
