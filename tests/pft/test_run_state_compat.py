"""A checkpoint written before a hyperparameter existed still resumes (its default is filled in);
one with another value of any hyperparameter is another run and is refused."""

from __future__ import annotations

from pft.jobs.specs import FinetuneSpec, Hparams
from pft.model_catalog import TEST_MODEL
from pft.run_state import _same_config


def test_settings_added_since_are_filled_with_their_defaults() -> None:
    config = FinetuneSpec(TEST_MODEL, "synthetic", hparams=Hparams(epochs=2)).to_dict()
    old = {**config, "hparams": dict(config["hparams"])}
    for added in ("augment", "prefix_cache", "prefix_cache_mb"):
        old["hparams"].pop(added)
    assert _same_config(old, config)
    changed = {**old, "hparams": {**old["hparams"], "lr": 0.5}}
    assert not _same_config(changed, config)
    off = {**config, "hparams": {**config["hparams"], "augment": False}}
    assert not _same_config(old, off)  # the default (on) is not "off"
    gone = {**config, "hparams": {**config["hparams"], "no_such_setting": 1}}
    assert not _same_config(gone, config)
