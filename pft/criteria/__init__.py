"""Selection criteria: per-unit scores that rank the units a partial fine-tuning run tunes.

`pft.criteria.registry` (torch-free) declares them; each criterion's module computes its
scores (`pft.criteria.ranking` runs one); `pft.criteria.compare` compares their rankings.
"""
