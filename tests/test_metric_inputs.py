"""Inputs at the edges: magnitudes whose squares leave float64's range, bad tensors and arguments, and merges of
metrics with different settings. Each gives the float64 SVD's value (on a rescaled copy, where the input itself
is out of numpy's comfortable range) or a one-line error, and the state from before stays intact and usable."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    assert_same_state,
    make_embeddings,
    random_batches,
    reference_rankme,
    reference_singular_values,
    state_snapshot,
    value_of,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rankme import RankMe, RankMeWarning, rankme
from rankme.functional import MAX_EPS

MODES = ("gram", "embeddings")
# Every update path: the default on-device one (propagate), the ones that read the batch's verdict on the host,
# the centred Chan merge, the max_samples cut, and embeddings mode.
CONFIGS: dict[str, dict[str, Any]] = {
    "gram-propagate": {"nan_strategy": "propagate"},
    "gram-error": {},
    "gram-ignore": {"nan_strategy": "ignore"},
    "gram-max-samples": {"max_samples": 10**6},
    "gram-centred": {"center": True},
    "gram-centred-propagate": {"center": True, "nan_strategy": "propagate"},
    "embeddings": {"mode": "embeddings"},
    "embeddings-centred": {"mode": "embeddings", "center": True},
}
# Powers of two, so that dividing by them is exact and the reference sees exactly the rows the metric saw.
EXPONENTS = (-1060, -1000, -700, -400, 400, 700, 1000)


def times_two_to(z: torch.Tensor, exponent: int) -> torch.Tensor:
    """``z * 2**exponent``, exactly, for exponents whose power of two alone is out of float64's range."""
    return z * 2.0 ** (exponent // 2) * 2.0 ** (exponent - exponent // 2)


def fed(metric: RankMe, batches: list[torch.Tensor]) -> RankMe:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        for batch in batches:
            metric.update(batch)
    return metric


# ---------------------------------------------------------------------------------------------------------
# Magnitudes whose squares overflow or underflow float64
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exponent", EXPONENTS)
@pytest.mark.parametrize("config", CONFIGS)
def test_any_float64_magnitude_gives_the_value_of_the_svd(config: str, exponent: int) -> None:
    kwargs = CONFIGS[config]
    z = make_embeddings("low_rank", n=120, d=12)
    big = times_two_to(z, exponent)  # 2^1000 ~ 1e301: Z^T Z overflows; 2^-700 ~ 1e-211: it underflows
    metric = fed(RankMe(**kwargs), random_batches(big, seed=exponent % 7))
    rows = times_two_to(big, -exponent)  # the rows exactly as the metric got them (subnormal inputs have lost bits)
    expected = reference_rankme(rows, center=kwargs.get("center", False))
    assert value_of(metric) == pytest.approx(expected, rel=1e-6)
    if exponent >= -1000:  # the spectrum in the input's units is itself subnormal below that
        spectrum = metric.summary().singular_values / 2.0**exponent
        reference = reference_singular_values(rows, center=kwargs.get("center", False))
        np.testing.assert_allclose(spectrum.numpy(), reference, rtol=1e-6, atol=1e-7 * reference[0])


@pytest.mark.parametrize("exponent", [-1000, -700, 700, 1000])
@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
def test_function_gives_the_value_of_the_svd_at_any_magnitude(exponent: int, center: bool) -> None:
    z = make_embeddings("offset", n=60, d=12)  # centring 1e3 + noise at 2^1000 overflows without the scale
    assert rankme(z * 2.0**exponent, center=center).item() == pytest.approx(
        reference_rankme(z, center=center), rel=1e-6
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_tiny_values_do_not_read_as_complete_collapse(config: str) -> None:
    z = make_embeddings("gaussian", n=80, d=10) * 2.0**-1000  # squares are 0 in float64
    metric = fed(RankMe(**CONFIGS[config]), list(z.split(16)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankMeWarning)  # no "complete collapse" warning
        value = metric.compute().item()
    assert value == pytest.approx(
        reference_rankme(z * 2.0**1000, center=CONFIGS[config].get("center", False)), rel=1e-6
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_batches_of_very_different_magnitudes_keep_every_contribution_exact(config: str) -> None:
    # Later batches raise the scale by up to 2^10: the state already accumulated is rescaled exactly and keeps
    # its weight; then a huge batch arrives after ordinary ones, and ordinary ones after it.
    kwargs = CONFIGS[config]
    z = make_embeddings("relu", n=200, d=16)
    exponents = [600, 604, 590, 610, 600]
    batches = [chunk * 2.0**e for chunk, e in zip(z.split(40), exponents, strict=True)]
    metric = fed(RankMe(**kwargs), batches)
    rescaled = torch.cat([chunk * 2.0 ** (e - 610) for chunk, e in zip(z.split(40), exponents, strict=True)])
    assert value_of(metric) == pytest.approx(reference_rankme(rescaled, center=kwargs.get("center", False)), rel=1e-6)


@pytest.mark.parametrize("config", CONFIGS)
def test_a_huge_batch_after_ordinary_ones_leaves_the_metric_usable(config: str) -> None:
    kwargs = CONFIGS[config]
    z = make_embeddings("gaussian", n=90, d=8)
    metric = fed(RankMe(**kwargs), [z[:30]])
    fed(metric, [z[30:60] * 1e300])
    value_of(metric)  # before the fix, every compute after such a batch failed inside eigh
    fed(metric, [z[60:]])
    rows = torch.cat([z[:30] * 2.0**-1000, z[30:60] * (1e300 * 2.0**-1000), z[60:] * 2.0**-1000])
    assert value_of(metric) == pytest.approx(reference_rankme(rows, center=kwargs.get("center", False)), rel=1e-6)


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("mode", MODES)
def test_merge_state_of_metrics_at_different_scales(mode: str, center: bool) -> None:
    z = make_embeddings("low_rank", n=100, d=12)
    small = fed(RankMe(mode=mode, center=center), list((z[:50] * 2.0**596).split(20)))
    large = fed(RankMe(mode=mode, center=center), list((z[50:] * 2.0**600).split(20)))
    small.merge_state(large)
    rows = torch.cat([z[:50] * 2.0**-4, z[50:]])
    assert value_of(small) == pytest.approx(reference_rankme(rows, center=center), rel=1e-6)


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
def test_state_dict_round_trip_keeps_the_scale(center: bool) -> None:
    z = make_embeddings("gaussian", n=90, d=8)
    first = fed(RankMe(center=center), [z[:45] * 2.0**700])
    first.persistent(True)
    second = RankMe(center=center)
    second.persistent(True)
    second.load_state_dict(first.state_dict())
    fed(second, [z[45:] * 2.0**690])
    rows = torch.cat([z[:45], z[45:] * 2.0**-10])
    assert value_of(second) == pytest.approx(reference_rankme(rows, center=center), rel=1e-6)


def test_a_state_dict_saved_without_a_scale_loads_as_unit_scale() -> None:
    z = make_embeddings("gaussian", n=60, d=8)
    saved = RankMe()
    saved.persistent(True)
    fed(saved, [z[:30]])
    state = {key: value for key, value in saved.state_dict().items() if key != "scale"}
    state["gram"] = z[:30].T @ z[:30]  # how the state was kept before the scale existed: in the input's units
    loaded = RankMe()
    loaded.persistent(True)
    loaded.load_state_dict(state)
    fed(loaded, [z[30:]])
    assert value_of(loaded) == pytest.approx(reference_rankme(z), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Bad tensors: one clear error, nothing changed
# ---------------------------------------------------------------------------------------------------------


def _bad_inputs() -> dict[str, tuple[Any, str]]:
    dense = torch.randn(6, 8)
    return {
        "complex64": (torch.randn(6, 8, dtype=torch.complex64), r"complex64.*real embeddings"),
        "complex128": (torch.randn(6, 8, dtype=torch.complex128), r"complex128.*real embeddings"),
        "bool": (torch.ones(6, 8, dtype=torch.bool), r"torch\.bool.*mask"),
        "int64": (torch.ones(6, 8, dtype=torch.int64), r"int64.*labels or indices"),
        "qint8": (torch.quantize_per_tensor(dense, 0.1, 0, torch.qint8), r"qint8.*dequantize"),
        "meta": (torch.empty(6, 8, device="meta"), r"meta device"),
        "sparse-coo": (dense.to_sparse(), r"dense tensor.*sparse_coo.*to_dense"),
        "sparse-csr": (dense.to_sparse_csr(), r"dense tensor.*sparse_csr.*to_dense"),
        "nested": (torch.nested.nested_tensor([torch.randn(2, 8), torch.randn(3, 8)]), r"dense tensor.*nested"),
        "numpy": (dense.numpy(), r"got ndarray.*torch\.from_numpy"),
        "list": (dense.tolist(), r"torch\.Tensor.*got list"),
    }


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_function_rejects_a_bad_tensor_with_a_message_about_it(bad: str) -> None:
    value, message = BAD_INPUTS[bad]
    with pytest.raises(ValueError, match=message) as caught:
        rankme(value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("bad", BAD_INPUTS)
@pytest.mark.parametrize("config", CONFIGS)
def test_update_rejects_a_bad_tensor_and_keeps_the_state(config: str, bad: str) -> None:
    value, message = BAD_INPUTS[bad]
    z = make_embeddings("gaussian", n=60, d=8)
    metric = fed(RankMe(**CONFIGS[config]), [z[:30]])
    before = state_snapshot(metric)
    with pytest.raises(ValueError, match=message) as caught:
        metric.update(value)
    assert "\n" not in str(caught.value)
    assert_same_state(before, state_snapshot(metric))
    fed(metric, [z[30:]])
    assert value_of(metric) == pytest.approx(reference_rankme(z, center=CONFIGS[config].get("center", False)), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_first_batch_leaves_a_fresh_metric_fresh(mode: str) -> None:
    metric = RankMe(mode=mode)
    before = state_snapshot(metric)
    with pytest.raises(ValueError, match="meta device"):
        metric.update(torch.empty(6, 8, device="meta"))
    assert_same_state(before, state_snapshot(metric))
    z = make_embeddings("gaussian", n=30, d=5)
    assert value_of(fed(metric, [z])) == pytest.approx(reference_rankme(z), rel=1e-6)


def test_gram_mode_refuses_a_d_whose_gram_cannot_be_allocated_and_stays_usable() -> None:
    metric = RankMe()
    wide = torch.zeros(1, 1).expand(2, 2**27)  # D x D float64 would be 128 PiB; the view itself holds one float
    with pytest.raises(ValueError, match=r"D=134217728 needs .* GiB.*mode='embeddings'"):
        metric.update(wide)
    assert metric.num_features is None
    z = make_embeddings("gaussian", n=30, d=6)
    assert value_of(fed(metric, [z])) == pytest.approx(reference_rankme(z), rel=1e-6)


def test_embeddings_mode_takes_a_very_wide_d() -> None:
    z = make_embeddings("gaussian", n=20, d=5000)
    metric = fed(RankMe(mode="embeddings"), list(z.split(7)))
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Unusual but valid tensors: the exact value
# ---------------------------------------------------------------------------------------------------------


def _views() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    z = make_embeddings("relu", n=64, d=12)
    row = make_embeddings("gaussian", n=1, d=12)
    return {
        "transposed": (z.T.contiguous().T, z),  # column-major storage
        "strided-columns": (make_embeddings("relu", n=64, d=24)[:, ::2], make_embeddings("relu", n=64, d=24)[:, ::2]),
        "expanded-row": (row.expand(64, 12), row.expand(64, 12).contiguous()),
        "channels-last-slice": (
            z.reshape(64, 12, 1, 1).to(memory_format=torch.channels_last)[:, :, 0, 0],
            z,
        ),
        "float8": (z.to(torch.float8_e4m3fn), z.to(torch.float8_e4m3fn).double()),
        "requires-grad": (z.clone().requires_grad_(True) * 1.0, z),
    }


VIEWS = _views()


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("config", CONFIGS)
def test_views_and_odd_storage_give_the_value_of_their_rows(config: str, view: str) -> None:
    tensor, rows = VIEWS[view]
    center = CONFIGS[config].get("center", False)
    metric = fed(RankMe(**CONFIGS[config]), [tensor[:20], tensor[20:]])
    # identical rows centred are exactly zero here (collapse, 1.0), while numpy's mean leaves rounding noise
    expected = 1.0 if center and view == "expanded-row" else reference_rankme(rows, center=center)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        assert value_of(metric) == pytest.approx(expected, rel=1e-6)
        assert rankme(tensor, center=center).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("config", CONFIGS)
def test_empty_batches_change_nothing(config: str) -> None:
    z = make_embeddings("gaussian", n=40, d=8)
    metric = fed(RankMe(**CONFIGS[config]), [z[:20]])
    before = state_snapshot(metric)
    fed(metric, [z[:0]])
    assert_same_state(before, state_snapshot(metric))
    fed(metric, [z[20:], z[:0]])
    assert value_of(metric) == pytest.approx(reference_rankme(z, center=CONFIGS[config].get("center", False)), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("center", ["yes", 1, None, np.bool_(True)], ids=repr)
def test_function_rejects_a_center_that_is_not_a_bool(center: object) -> None:
    with pytest.raises(ValueError, match="`center` to be a bool"):
        rankme(torch.randn(10, 4), center=center)  # type: ignore[arg-type]


@pytest.mark.parametrize("eps", [0.5, 1.0, 2 * MAX_EPS, math.nan, math.inf, -1e-9, True, "1e-7"], ids=repr)
def test_an_eps_that_pushes_the_value_off_the_papers_scale_is_refused(eps: object) -> None:
    with pytest.raises(ValueError, match=r"`eps` to be a float in \[0, 0\.01\].*floor of 1"):
        rankme(torch.randn(10, 4), eps=eps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`eps` to be a float in \[0, 0\.01\]"):
        RankMe(eps=eps)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_the_largest_eps_keeps_the_value_within_eps_of_the_floor(mode: str) -> None:
    # rank one: one p_k is 1 + eps, the rest eps; the value is just below 1 and stays within about eps of it
    z = make_embeddings("gaussian", n=40, d=1) @ make_embeddings("gaussian", n=1, d=8)
    metric = fed(RankMe(mode=mode, eps=MAX_EPS), [z])
    value = value_of(metric)
    assert value == pytest.approx(reference_rankme(z, eps=MAX_EPS), rel=1e-6)
    assert value >= 1 - MAX_EPS


# ---------------------------------------------------------------------------------------------------------
# merge_state between metrics of different settings
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mine", "theirs", "setting"),
    [
        ({"mode": "gram"}, {"mode": "embeddings"}, "mode"),
        ({"mode": "embeddings"}, {"mode": "gram"}, "mode"),
        ({"center": False}, {"center": True}, "center"),
        ({"center": True}, {"center": False}, "center"),
        ({"mode": "embeddings", "center": True}, {"mode": "embeddings"}, "center"),
    ],
    ids=repr,
)
def test_merge_state_refuses_a_metric_of_other_settings_and_keeps_the_state(
    mine: dict[str, Any], theirs: dict[str, Any], setting: str
) -> None:
    z = make_embeddings("gaussian", n=60, d=8)
    metric = fed(RankMe(**mine), [z[:30]])
    other = fed(RankMe(**theirs), [z[30:]])
    before = state_snapshot(metric)
    defaults = {"mode": "gram", "center": False}
    with pytest.raises(ValueError, match=f"same `{setting}`") as caught:
        metric.merge_state(other)
    assert "\n" not in str(caught.value)
    for side in (mine, theirs):
        assert f"{setting}={side.get(setting, defaults[setting])!r}" in str(caught.value)
    assert_same_state(before, state_snapshot(metric))
    assert value_of(metric) == pytest.approx(reference_rankme(z[:30], center=mine.get("center", False)), rel=1e-6)


@pytest.mark.parametrize(("mine", "theirs"), [({}, {"center": True}), ({"center": True}, {"mode": "embeddings"})])
def test_merge_state_refuses_a_dict_of_another_metrics_states(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    z = make_embeddings("gaussian", n=60, d=8)
    metric = fed(RankMe(**mine), [z[:30]])
    other = fed(RankMe(**theirs), [z[30:]])
    before = state_snapshot(metric)
    with pytest.raises(ValueError, match=r"Expected the states of a RankMe\(mode=.*same `mode` and `center`"):
        metric.merge_state(dict(other.metric_state))
    assert_same_state(before, state_snapshot(metric))


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("mode", MODES)
def test_merge_state_of_other_eps_max_samples_and_nan_strategy_uses_this_metrics_eps(mode: str, center: bool) -> None:
    z = make_embeddings("low_rank", n=80, d=8)
    metric = fed(RankMe(mode=mode, center=center, eps=1e-7), [z[:40]])
    other = fed(RankMe(mode=mode, center=center, eps=1e-5, max_samples=1000, nan_strategy="ignore"), [z[40:]])
    metric.merge_state(other)
    assert value_of(metric) == pytest.approx(reference_rankme(z, eps=1e-7, center=center), rel=1e-6)


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
def test_merge_state_carries_the_count_of_left_out_batches(center: bool) -> None:
    z = make_embeddings("gaussian", n=40, d=8)
    metric = fed(RankMe(center=center, nan_strategy="propagate"), [z[:20]])
    other = fed(RankMe(center=center, nan_strategy="propagate"), [z[20:], torch.full((3, 8), math.nan)])
    metric.merge_state(other)
    summary = metric.summary()
    assert summary.non_finite_batches == 1
    assert summary.num_samples == 40
    assert math.isnan(summary.value.item())


# ---------------------------------------------------------------------------------------------------------
# The row buffer: small batches are gathered into one product; every reader sees the queued rows
# ---------------------------------------------------------------------------------------------------------


def _uneven_batches(z: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Batches of 1 to 1500 rows and one of 2500 (more than the buffer holds), in random order."""
    g = torch.Generator().manual_seed(seed)
    batches, start = [], 0
    while start < z.shape[0]:
        size = 2500 if start == 3000 else int(torch.randint(1, 1500, (1,), generator=g))
        batches.append(z[start : start + size])
        start += size
    return batches


@pytest.mark.parametrize("config", ["gram-propagate", "gram-error", "gram-max-samples"])
def test_buffered_products_of_uneven_batches_are_exact(config: str) -> None:
    z = make_embeddings("relu", n=9000, d=320, seed=5)
    metric = fed(RankMe(**CONFIGS[config]), _uneven_batches(z, seed=1))
    assert metric.summary().num_samples == 9000
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)
    reference = reference_singular_values(z)
    spectrum = metric.summary().singular_values.numpy()
    np.testing.assert_allclose(spectrum, reference, rtol=1e-6, atol=1e-7 * reference[0])


def test_bad_and_huge_batches_inside_a_partly_filled_buffer() -> None:
    z = make_embeddings("gaussian", n=3000, d=300, seed=6)
    batches = [z[:700], torch.full((50, 300), math.nan), z[700:1400] * 2.0**600, z[1400:3000]]
    metric = fed(RankMe(nan_strategy="propagate"), batches)
    assert metric.summary().non_finite_batches == 1
    metric.reset()
    fed(metric, [batches[0], batches[2], batches[3]])
    rows = torch.cat([z[:700] * 2.0**-600, z[700:1400], z[1400:] * 2.0**-600])
    assert value_of(metric) == pytest.approx(reference_rankme(rows), rel=1e-6)


@pytest.mark.parametrize("block", [None, 37, 64, 75, 100, 299, 1000])
def test_every_leaf_size_gives_the_full_products_eigenvalues(block: int | None) -> None:
    from rankme.metric import _add_gram_

    z = make_embeddings("low_rank", n=500, d=300, seed=7)
    gram = torch.zeros(300, 300, dtype=torch.float64)
    for chunk in z.split(170):
        _add_gram_(gram, chunk.clone(), block=block)
    np.testing.assert_allclose(
        torch.linalg.eigvalsh(gram).numpy(), torch.linalg.eigvalsh(z.T @ z).numpy(), rtol=1e-9, atol=1e-9
    )


def test_the_leaf_size_is_chosen_from_timed_products_and_kept() -> None:
    from rankme.metric import _BUFFER_ROWS, _TUNER

    d = 352  # a D no other test uses: candidates are the full product and leaves of 88 and 176
    z = make_embeddings("gaussian", n=_BUFFER_ROWS * 10, d=d, seed=8)
    metric = fed(RankMe(), list(z.split(256)))
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)
    timings = _TUNER.timings[("cpu", d)]
    assert set(timings) == {None, 88, 176}
    assert [len(times) for times in timings.values()] == [3, 3, 3]  # the first 9 full buffers, in turn
    chosen = _TUNER.choice[("cpu", d)]
    assert chosen == min(timings, key=lambda leaf: sorted(timings[leaf])[1])  # the lowest median
    before = {leaf: list(times) for leaf, times in timings.items()}
    fed(metric, list(z.split(256)))  # later products use the choice and are not timed
    assert timings == before


@pytest.mark.parametrize(("d", "batch"), [(328, 500), (344, 4096)], ids=["uneven-batches", "big-batches"])
def test_the_leaf_size_is_tuned_whatever_the_batch_size(d: int, batch: int) -> None:
    from rankme.metric import _BUFFER_ROWS, _TUNER

    z = make_embeddings("gaussian", n=_BUFFER_ROWS * 20, d=d, seed=9)  # 9 full-buffer products at least
    metric = fed(RankMe(), list(z.split(batch)))
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)
    assert ("cpu", d) in _TUNER.choice  # decided from timings, not left at the constant default
    assert sum(len(times) for times in _TUNER.timings[("cpu", d)].values()) >= len(_TUNER.candidates(d))


def test_loading_a_state_drops_the_rows_queued_before_it() -> None:
    z = make_embeddings("gaussian", n=40, d=8)
    saved = fed(RankMe(), [z[:10]])
    saved.persistent(True)
    loaded = fed(RankMe(), [z[10:17]])  # 7 rows still queued in the buffer
    loaded.persistent(True)
    loaded.load_state_dict(saved.state_dict())
    fed(loaded, [z[17:]])
    assert value_of(loaded) == pytest.approx(reference_rankme(torch.cat([z[:10], z[17:]])), rel=1e-6)
    assert loaded.summary().num_samples == 33


def test_normalized_is_nan_when_no_finite_row_was_kept() -> None:
    metric = RankMe(nan_strategy="propagate")
    metric.update(torch.full((4, 3), math.nan))
    summary = metric.summary()
    assert math.isnan(summary.normalized)
    assert summary.non_finite_batches == 1


@pytest.mark.parametrize("reader", ["metric_state", "state_dict", "merge_state", "to", "summary", "forward"])
def test_every_reader_of_the_state_sees_the_queued_rows(reader: str) -> None:
    z = make_embeddings("gaussian", n=90, d=8)
    metric = fed(RankMe(), [z[:30], z[30:60]])  # 60 rows queued, no product yet
    if reader == "metric_state":
        gram = metric.metric_state["gram"]
        torch.testing.assert_close(gram.tril(), (z[:60].T @ z[:60]).tril() / metric.scale**2)
        fed(metric, [z[60:]])
    elif reader == "state_dict":
        metric.persistent(True)
        other = RankMe()
        other.persistent(True)
        other.load_state_dict(metric.state_dict())
        metric = fed(other, [z[60:]])
    elif reader == "merge_state":
        other = fed(RankMe(), [z[60:]])
        metric.merge_state(other)
    elif reader == "to":
        metric = fed(metric.to("cpu"), [z[60:]])
    elif reader == "summary":
        assert metric.summary().num_samples == 60
        fed(metric, [z[60:]])
    else:
        metric(z[60:])
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


def test_reset_drops_the_queued_rows_and_the_buffer_stays_fixed_in_size() -> None:
    from rankme.metric import _BUFFER_ROWS

    z = make_embeddings("gaussian", n=5000, d=16)
    metric = fed(RankMe(), list(z.split(100)))
    assert metric._rows is not None
    assert metric._rows.shape == (_BUFFER_ROWS, 16)  # memory does not grow with N
    metric.reset()
    other = make_embeddings("low_rank", n=40, d=6)
    assert value_of(fed(metric, [other])) == pytest.approx(reference_rankme(other), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# The layout of the buffer and the state: rows an odd number of 64-byte lines apart
# ---------------------------------------------------------------------------------------------------------


def assert_rows_an_odd_number_of_lines_apart(t: torch.Tensor) -> None:
    # At a power-of-two row stride (D=2048 float64) the GEMM blocks of the product alias in the CPU caches.
    stride, d = t.stride(0), t.shape[1]
    assert t.dtype == torch.float64
    assert t.stride(1) == 1
    assert stride % 8 == 0, f"D={d}: rows {stride} float64 apart, not whole 64-byte lines"
    assert (stride // 8) % 2 == 1, f"D={d}: rows {stride} float64 apart, an even number of 64-byte lines"
    assert d <= stride < d + 16


def padding_of(t: torch.Tensor) -> torch.Tensor:
    """The storage between the end of each row of ``t`` and the start of the next (empty if contiguous)."""
    return t.as_strided((t.shape[0], t.stride(0)), (t.stride(0), 1))[:, t.shape[1] :]


@pytest.mark.parametrize("d", [1, 7, 8, 24, 300, 1000, 2048])
def test_the_buffer_and_the_state_lay_rows_an_odd_number_of_cache_lines_apart(d: int) -> None:
    z = make_embeddings("gaussian", n=40, d=d, seed=d)
    metric = fed(RankMe(nan_strategy="propagate"), [z[:25], z[25:]])
    assert metric._rows is not None
    assert_rows_an_odd_number_of_lines_apart(metric._rows)
    assert_rows_an_odd_number_of_lines_apart(metric.gram)
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


@pytest.mark.parametrize("source", ["merge_state", "load_state_dict", "sync-rescale", "move"])
def test_the_state_regains_its_layout_after_a_merge_load_or_move(source: str) -> None:
    # Sums, rescalings and moves make a contiguous state; the next product lays it out again, values intact.
    from rankme.metric import _BUFFER_ROWS

    z = make_embeddings("relu", n=3 * _BUFFER_ROWS, d=64, seed=6)
    first, second, rest = z[:_BUFFER_ROWS], z[_BUFFER_ROWS : 2 * _BUFFER_ROWS], z[2 * _BUFFER_ROWS :]
    metric = fed(RankMe(), [first])
    rows = z
    if source == "merge_state":
        metric.merge_state(fed(RankMe(), [times_two_to(second, 600)]))
        rows = torch.cat([times_two_to(first, -600), second, times_two_to(rest, -600)])
    elif source == "load_state_dict":
        other = fed(RankMe(), [second])
        other.persistent(True)
        metric.persistent(True)
        metric.load_state_dict({**other.state_dict(), "gram": other.gram.contiguous()})  # as an older save holds it
        rows = z[_BUFFER_ROWS:]
    elif source == "sync-rescale":  # what _sync_dist does when another rank holds larger values
        fed(metric, [second])
        metric._rescale_to(torch.tensor(2.0**10, dtype=torch.float64))
    else:
        fed(metric, [second])
        metric.gram = metric.gram.contiguous()  # what `.to(another_device)` leaves (no second device here)
    assert metric.gram.is_contiguous()
    fed(metric, [rest])
    metric._flush()
    assert_rows_an_odd_number_of_lines_apart(metric.gram)
    assert value_of(metric) == pytest.approx(reference_rankme(rows), rel=1e-6)


def test_loading_a_state_of_another_size_replaces_the_buffer_too() -> None:
    z, other = make_embeddings("gaussian", n=50, d=32, seed=1), make_embeddings("low_rank", n=300, d=64, seed=2)
    saved = fed(RankMe(), [other[:100]])
    saved.persistent(True)
    metric = fed(RankMe(), [z])  # 50 rows of D=32 queued in a buffer of D=32
    metric.persistent(True)
    metric.load_state_dict(saved.state_dict())
    fed(metric, [other[100:]])
    assert value_of(metric) == pytest.approx(reference_rankme(other), rel=1e-6)


def test_nothing_in_the_padding_between_rows_reaches_the_value() -> None:
    from rankme.metric import _BUFFER_ROWS

    z = make_embeddings("low_rank", n=_BUFFER_ROWS + 700, d=48, seed=2)  # 6 lines a row: padded to 7
    metric = fed(RankMe(nan_strategy="propagate"), [z[:100]])
    assert metric._rows is not None
    assert padding_of(metric._rows).numel()
    assert padding_of(metric.gram).numel()
    padding_of(metric._rows).fill_(math.nan)  # uninitialised memory may hold anything
    padding_of(metric.gram).fill_(math.inf)
    fed(metric, list(z[100:].split(300)))
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


def test_a_batch_larger_than_the_buffer_goes_through_it_without_a_float64_copy() -> None:
    # Memory stays bounded by the buffer whatever the batch: no float64 copy of a whole large batch.
    from rankme.metric import _BUFFER_ROWS

    d = 48
    z = make_embeddings("gaussian", n=3 * _BUFFER_ROWS + 5, d=d, seed=3).float()  # an encoder's float32 output
    metric = RankMe(nan_strategy="propagate")
    with _Float64Outputs() as outputs:
        metric.update(z[:100])
        metric.update(z[100:])
    assert metric._rows is not None
    assert outputs.largest <= _BUFFER_ROWS * metric._rows.stride(0)  # the buffer's allocation, padding included
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Float32 and narrower batches: multiplied as they are while the state is in units of 1
# ---------------------------------------------------------------------------------------------------------


class _LargeOps(TorchDispatchMode):
    """Records the name of every aten op that reads or writes a tensor of at least ``numel`` elements."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.names = numel, list[str]()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        if any(t.numel() >= self.numel for t in tensors):
            self.names.append(func.overloadpacket.__name__)
        return out


class _Float64Outputs(TorchDispatchMode):
    """Records the largest number of elements of any float64 tensor an aten op returns."""

    largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_float32_batch_is_read_twice_and_written_once_before_the_product(dtype: torch.dtype) -> None:
    # The default on-device path: one max |z| reduction, one cast into the buffer, the mask (a no-op on finite
    # rows, but a pass), then the GEMMs. Float64 input may square past float64's range, so it alone is rescaled.
    from rankme.metric import _BUFFER_ROWS

    z = make_embeddings("gaussian", n=_BUFFER_ROWS, d=300).to(dtype)
    metric = RankMe(nan_strategy="propagate")
    batches = list(z.split(512))
    with _LargeOps(numel=512 * 300) as ops:
        for batch in batches:
            metric.update(batch)
    views = ("detach", "empty", "slice", "alias", "permute", "t", "transpose")
    passes = [name for name in ops.names if name not in (*views, "addmm_")]
    rescaling = ["mul_"] if dtype == torch.float64 else []
    assert passes == ["aminmax", "copy_", "masked_fill_"] * 4 + rescaling
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


@pytest.mark.parametrize("exponent", [-149, -126, -60, 60, 124])
@pytest.mark.parametrize("config", ["gram-propagate", "gram-error", "gram-ignore", "gram-max-samples"])
def test_float32_batches_at_the_edges_of_their_range_are_exact_unscaled(config: str, exponent: int) -> None:
    # 2^124 * |z| (near float32's largest) squares to about 2^254 and 2^-149 (its smallest subnormal) to 2^-298: both
    # inside float64's normal range, so the product needs no scale; the state stays in units of 1.
    z = (make_embeddings("low_rank", n=300, d=12) * 2.0**exponent).float()
    metric = fed(RankMe(**CONFIGS[config]), random_batches(z, seed=3))
    rows = z.double() * 2.0**-exponent
    assert value_of(metric) == pytest.approx(reference_rankme(rows), rel=1e-6)
    assert metric.scale.item() == (1.0 if z.abs().max() > 0 else 0.0)


@pytest.mark.parametrize("order", ["float64-first", "float64-between", "float64-last"])
@pytest.mark.parametrize("exponent", [-700, 600])
def test_float32_and_float64_batches_of_any_magnitude_mix_exactly(exponent: int, order: str) -> None:
    # Float32 rows go in unscaled until a float64 batch (whose squares leave float64's range) sets a scale;
    # from then on every batch, float32 included, is rescaled to it in the buffer.
    z = make_embeddings("relu", n=3000, d=40, seed=4)
    wide = times_two_to(z[:500], exponent)
    narrow = [z[500:1100].float(), z[1100:3000].float()]  # the second fills the buffer and spills over
    batches = {
        "float64-first": [wide, *narrow],
        "float64-between": [narrow[0], wide, narrow[1]],
        "float64-last": [*narrow, wide],
    }[order]
    metric = fed(RankMe(nan_strategy="propagate"), batches)
    rows = torch.cat([z[:500], times_two_to(z[500:].float().double(), -exponent)])
    assert value_of(metric) == pytest.approx(reference_rankme(rows), rel=1e-6)


@pytest.mark.parametrize("source", ["merge_state", "load_state_dict"])
def test_float32_batches_after_a_scaled_state_arrives_are_rescaled_to_it(source: str) -> None:
    z = make_embeddings("gaussian", n=400, d=16, seed=5)
    scaled = fed(RankMe(), [times_two_to(z[:200], 600)])
    metric = fed(RankMe(), [z[200:300].float()])
    if source == "merge_state":
        metric.merge_state(scaled)
    else:
        scaled.persistent(True)
        metric.persistent(True)
        metric.load_state_dict(scaled.state_dict())
    fed(metric, [z[300:].float()])
    kept = z[200:] if source == "merge_state" else z[300:]
    rows = torch.cat([z[:200], times_two_to(kept.float().double(), -600)])
    assert value_of(metric) == pytest.approx(reference_rankme(rows), rel=1e-6)
