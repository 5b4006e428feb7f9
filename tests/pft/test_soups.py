"""Soups: uniform (streaming), greedy (Wortsman et al. 2022), and masked (partial tuning)."""

import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pft.errors import PftError
from pft.soups.greedy import greedy_soup
from pft.soups.masked import masked_soup
from pft.soups.uniform import uniform_soup


def state(seed, names=("a", "b", "c"), shape=(4, 3)):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(shape, generator=g) for n in names}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 1000))
def test_uniform_soup_is_the_mean(n, seed):
    ingredients = [state(seed + i) for i in range(n)]
    soup = uniform_soup(ingredients)
    for k in ("a", "b", "c"):
        torch.testing.assert_close(soup[k], torch.stack([s[k] for s in ingredients]).mean(0))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    masks=st.lists(st.sets(st.sampled_from("abc")), min_size=1, max_size=5),
)
def test_deltas_uniform_and_masked_against_full_models(seed, masks):
    base = state(seed)
    deltas = [{k: v for k, v in state(seed + 1 + i).items() if k in m} for i, m in enumerate(masks)]
    full = [{**base, **d} for d in deltas]
    uni = uniform_soup(deltas, base)
    msk = masked_soup(deltas, base)
    tuned = set().union(*masks)
    assert set(uni) == set(msk) == tuned
    for k in tuned:
        torch.testing.assert_close(uni[k], torch.stack([f[k] for f in full]).mean(0))
        mine = [d[k] for d in deltas if k in d]
        torch.testing.assert_close(msk[k], torch.stack(mine).mean(0))


def test_uniform_soup_streams_two_state_dicts():
    # Counted, not measured: tracemalloc does not see torch's allocator, so each ingredient
    # tensor is tracked until it is freed.
    live = [0, 0]  # now, peak

    def freed():
        live[0] -= 1

    def ingredients(n):
        for i in range(n):
            s = state(i)
            for value in s.values():
                live[0] += 1
                live[1] = max(live)
                weakref.finalize(value, freed)
            yield s

    uniform_soup(ingredients(12))
    # The ingredient being averaged and the next one being made (3 tensors each), never all 36.
    assert live[1] <= 6


def test_greedy_soup_trace_and_strict_improvement():
    # Ingredients are scalars; the score prefers soups near 1.0.
    values = [0.0, 1.2, 0.9, 3.0, 1.0]
    ingredients = [{"w": torch.tensor([v])} for v in values]

    def score(s):
        return -abs(float(s["w"]) - 1.0)

    res = greedy_soup(ingredients, score)
    order = [s.ingredient for s in res.trace]
    assert order == [4, 2, 1, 0, 3]  # sorted by individual held-out score, best first
    assert res.trace[0].accepted
    # 1.0 alone scores 0; adding 0.9 -> 0.95 (worse); adding 1.2 -> 1.1 (worse); ...
    accepted = [s.ingredient for s in res.trace if s.accepted]
    assert accepted == res.selected
    assert res.score == max(s.candidate_score for s in res.trace if s.accepted)
    expected = torch.tensor([values[i] for i in res.selected]).mean()
    torch.testing.assert_close(res.soup["w"], expected.reshape(1))


def test_greedy_rejects_ties():
    ingredients = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([1.0])}]
    res = greedy_soup(ingredients, lambda s: 0.5)
    assert [s.accepted for s in res.trace] == [True, False]


def test_greedy_adds_when_it_helps():
    ingredients = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}]
    res = greedy_soup(
        ingredients, lambda s: -abs(float(s["w"]) - 1.0), individual_scores=[-1.0, -1.0]
    )
    assert res.selected == [1, 0] and res.score == 0.0  # ties: reverse input order


def test_shape_mismatch_named():
    base = state(0)
    with pytest.raises(PftError, match="tensor 'b' has shape"):
        uniform_soup([{"b": torch.zeros(2, 2)}], base)
    with pytest.raises(PftError, match="'zz' does not exist"):
        masked_soup([{"zz": torch.zeros(1)}], base)
    with pytest.raises(PftError, match="not in every ingredient"):
        uniform_soup([state(0), state(1, names=("a", "b"))])
    with pytest.raises(PftError, match="at least one"):
        uniform_soup([])


def _reference_greedy(models, val_accs, heldout):
    """A port of mlfoundations/model-soups' greedy soup (main.py, step 4) over dicts."""
    import operator

    accs = sorted(val_accs.items(), key=operator.itemgetter(1))
    accs.reverse()
    sorted_models = [x[0] for x in accs]
    ingredients = [sorted_models[0]]
    params = models[sorted_models[0]]
    best = accs[0][1]
    for i in range(1, len(models)):
        new = models[sorted_models[i]]
        n = len(ingredients)
        potential = {
            k: params[k].clone() * (n / (n + 1.0)) + new[k].clone() * (1.0 / (n + 1)) for k in new
        }
        acc = heldout(potential)
        if acc > best:
            ingredients.append(sorted_models[i])
            best = acc
            params = potential
    return ingredients, params


@pytest.mark.parametrize("seed", range(20))
def test_greedy_matches_the_reference_on_random_score_tables_with_ties(seed):
    import random

    rng = random.Random(seed)
    n = rng.randint(2, 7)
    # Ingredient i is the i-th basis vector: a soup's support names its members.
    models = {i: {"w": torch.eye(n, dtype=torch.float64)[i]} for i in range(n)}
    table: dict = {}

    def heldout(s):
        key = frozenset(int(j) for j in torch.nonzero(s["w"]).flatten())
        return table.setdefault(key, rng.choice([0.1, 0.2, 0.3]))  # few values: many ties

    singles = [heldout(models[i]) for i in range(n)]
    ref_members, ref_params = _reference_greedy(models, dict(enumerate(singles)), heldout)
    res = greedy_soup([models[i] for i in range(n)], heldout, individual_scores=singles)
    assert res.selected == ref_members
    torch.testing.assert_close(res.soup["w"], ref_params["w"])


def test_greedy_uses_a_running_mean_and_reads_each_ingredient_once():
    reads = []

    class Lazy(dict):
        def __init__(self, i, v):
            super().__init__(w=torch.tensor([v]))
            self.i = i

        def __getitem__(self, k):
            reads.append(self.i)
            return super().__getitem__(k)

    ingredients = [Lazy(i, float(i)) for i in range(30)]
    res = greedy_soup(ingredients, lambda s: float(s["w"]), individual_scores=list(range(30)))
    assert res.selected == [29]  # the mean only falls
    assert sorted(reads) == list(range(30))  # one read each: no re-averaging
