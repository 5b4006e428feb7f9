"""The lab's contract: the vocabulary, settings, data-folder layout and HTTP payloads that every
deployable shares (API, worker, dashboard, launcher, science core).

Torch-free and leaf-level: it imports only the standard library, pydantic and pydantic-settings,
never another package of the lab (a test walks the imports). See docs/CONTRACTS.md.
"""
