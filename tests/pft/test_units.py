"""Contract tests of the unit map over several timm architectures (meta device, no weights)."""

import pytest

from pft.errors import PftError
from pft.model_catalog import CATALOG, get_spec, named_shapes_from_table, shape_table
from pft.model_factory import compute_shape_table
from pft.units import build_unit_map

ARCHS = {
    "vit_tiny_patch16_224": (12, ["ATTN", "FFN"]),
    "vit_base_patch16_224": (12, ["ATTN", "FFN"]),
    "deit_small_patch16_224": (12, ["ATTN", "FFN"]),
    "beit_base_patch16_224": (12, ["ATTN", "FFN"]),
    "swin_tiny_patch4_window7_224": (12, [f"S{s}.{k}" for s in range(4) for k in ("ATTN", "FFN")]),
}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request):
    spec = get_spec(request.param)
    return request.param, compute_shape_table(spec)


def test_every_tensor_is_assigned_exactly_once(arch):
    name, table = arch
    um = build_unit_map(named_shapes_from_table(table, 10), model=name, num_classes=10)
    depth, groups = ARCHS[name]
    assert um.depth == depth
    assert list(um.groups) == groups
    owned = [t for u in um.units for t in u.tensors] + list(um.head + um.stem + um.final_norm)
    assert sorted(owned) == sorted(um.shapes)
    assert um.head_params == 10 * um.shapes[um.head[0]][1] + 10


def test_unit_contents(arch):
    name, table = arch
    um = build_unit_map(named_shapes_from_table(table, 10), model=name, num_classes=10)
    for unit in um.units:
        parts = {
            "ATTN": ("norm1", "attn", "gamma_1", "ls1"),
            "FFN": ("norm2", "mlp", "gamma_2", "ls2"),
        }
        for tensor in unit.tensors:
            assert any(f".{p}" in tensor for p in parts[unit.kind]), tensor
    # Units of one group share a shape: that is what makes them comparable.
    for units in um.groups.values():
        assert len({u.params for u in units}) == 1


def test_swin_blocks_numbered_in_depth_order():
    um = build_unit_map(
        named_shapes_from_table(compute_shape_table(get_spec("swin_tiny_patch4_window7_224")), 5),
        model="swin",
        num_classes=5,
    )
    # Swin-T has 2, 2, 6, 2 blocks per stage.
    assert [len(um.groups[f"S{s}.ATTN"]) for s in range(4)] == [2, 2, 6, 2]
    assert [u.block for u in um.groups["S2.FFN"]] == [4, 5, 6, 7, 8, 9]
    assert um.unit("ATTN.4").tensors[0].startswith("layers.2.blocks.0.")


def test_paper_bookkeeping_vit_base():
    from pft.model_catalog import unit_map_for

    um = unit_map_for("vit_base_patch16_224.augreg_in21k", 100)
    shapes = um.shapes
    assert um.head_params == 76_900
    assert um.total_params == 85_875_556
    assert um.count(["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]) == 1_771_776
    assert um.count(["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias"]) == 2_362_368
    assert um.unit("ATTN.0").params == 1_536 + 1_771_776 + 590_592
    assert um.unit("FFN.0").params == 1_536 + 2_362_368 + 2_360_064
    assert shapes["head.weight"] == (100, 768)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_shipped_shape_tables_match_timm(name):
    spec = get_spec(name)
    shipped = shape_table(spec)
    assert shipped is not None, (
        f"no shipped table for {name}: run python -m pft.model_factory --write-shipped"
    )
    fresh = compute_shape_table(spec)
    assert [tuple(x) for x in map(tuple, shipped["body"])] == [tuple(x) for x in fresh["body"]]
    assert shipped["head"] == [list(x) for x in fresh["head"]]


def test_unknown_architecture_names_supported_families():
    with pytest.raises(PftError, match="supported families"):
        build_unit_map([("conv1.weight", (64, 3, 7, 7)), ("fc.weight", (10, 64))], num_classes=10)


def test_unknown_unit_names_range():
    from pft.model_catalog import unit_map_for

    um = unit_map_for("pft/vit-micro", 3)
    with pytest.raises(PftError, match=r"ATTN.0..ATTN.3"):
        um.unit("ATTN.9")


def test_unknown_model_suggests_close_matches():
    with pytest.raises(PftError, match="close matches: vit_base_patch16_224"):
        get_spec("vit_base_patch16_22")


def test_vit_large_costs_nothing():
    import tracemalloc

    tracemalloc.start()
    table = compute_shape_table(get_spec("vit_large_patch16_224"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    um = build_unit_map(named_shapes_from_table(table, 100), num_classes=100)
    assert um.total_params > 300_000_000
    assert peak < 50 * 2**20  # meta device: no weights allocated


def test_groups_of_blocks_with_different_shapes_are_split():
    def block(i, kv):
        return [
            (f"blocks.{i}.norm1.weight", (8,)),
            (f"blocks.{i}.attn.q.weight", (8, 8)),
            (f"blocks.{i}.attn.kv.weight", (kv, 8)),
            (f"blocks.{i}.norm2.weight", (8,)),
            (f"blocks.{i}.mlp.fc1.weight", (16, 8)),
        ]

    shapes = [s for i, kv in enumerate([16, 4, 16, 4]) for s in block(i, kv)]
    um = build_unit_map([*shapes, ("head.weight", (3, 8))], num_classes=3)
    assert um.groups.keys() == {"ATTN:0", "ATTN:1", "FFN"}
    assert [u.block for u in um.groups["ATTN:1"]] == [1, 3]
    for units in um.groups.values():
        assert len({u.params for u in units}) == 1
