"""A 50-ingredient soup on the CLI path stays within a few state dicts of memory (peak RSS of a
fresh process), far below the 50 state dicts that loading every ingredient would take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pft.base_model import build_pretrained
from pft.checkpoint import delta_metadata, save_delta

MODEL = "pft/vit-micro"
OVERRIDES = dict(embed_dim=192, num_heads=3)  # ~1.8M params: 7 MB per full delta
N = 50

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    from lab.cli import app
    from pft.base_model import build_pretrained

    def status(key):  # kB -> bytes, this process only (VmHWM: its peak since a reset)
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    model, n, overrides = json.loads(sys.argv[1])
    build_pretrained(model, n, pretrained=False, overrides=overrides)  # warm timm
    try:  # reset the peak to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = status("VmRSS")
    r = CliRunner().invoke(app, ["soup", sys.argv[2], *sys.argv[4:], "--out", sys.argv[3]])
    assert r.exit_code == 0, r.output
    print(json.dumps({"growth": status("VmHWM") - before}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uniform", "greedy"])
def test_fifty_ingredient_soup_memory(tmp_path, monkeypatch, method):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    base = build_pretrained(MODEL, 4, pretrained=False, overrides=OVERRIDES)
    state = {k: v.detach().clone() for k, v in base.named_parameters()}
    size = sum(v.numel() * v.element_size() for v in state.values())
    paths = []
    g = torch.Generator().manual_seed(0)
    for i in range(N):
        tensors = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
        meta = delta_metadata(
            base_model=MODEL,
            model_overrides=OVERRIDES,
            pretrained=False,
            num_classes=4,
            strategy="full",
            strategy_params={},
            dataset="synthetic",
            data_config={"input_size": [1, 16, 16], "mean": [0.5], "std": [0.5]},
            hparams={"head_seed": 0, "seed": i},
        )
        path = tmp_path / f"d{i}.safetensors"
        save_delta(path, tensors, meta)
        paths.append(str(path))
    del tensors
    args = json.dumps([MODEL, 4, OVERRIDES])

    def growth(ingredients):
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, args, method, str(tmp_path / "soup.safetensors")]
            + ingredients,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])["growth"] / size

    two, many = growth(paths[:2]), growth(paths)
    # Loading every ingredient would add N - 2 state dicts; streaming adds about none (the
    # fixed cost: the base model and its copy, the float64 running sum, one candidate, the
    # output being written).
    assert many - two < 4, (two, many)
    assert many < 16, (two, many)
