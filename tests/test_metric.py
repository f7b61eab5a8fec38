"""The streaming `RankMe` metric, both modes, against an independent float64 SVD reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import (
    SPECTRA,
    assert_same_state,
    embedding_matrices,
    make_embeddings,
    random_batches,
    reference_rankme,
    reference_singular_values,
    state_snapshot,
    value_of,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from rankme import RankMe, RankMeSummary, RankMeWarning, rankme

MODES = ("gram", "embeddings")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PROPERTY_SETTINGS = settings(max_examples=20, deadline=None)


def accumulate(metric: RankMe, z: torch.Tensor, seed: int = 0) -> RankMe:
    """Feed ``z`` to ``metric`` in random batches, ignoring the N < D warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        for batch in random_batches(z, seed):
            metric.update(batch)
    return metric


# ---------------------------------------------------------------------------------------------------------
# Exactness, both modes, random batch splits
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("kind", SPECTRA)
@pytest.mark.parametrize("mode", MODES)
def test_value_matches_float64_svd_reference(mode: str, kind: str, center: bool, dtype: torch.dtype) -> None:
    if dtype == torch.float16 and kind == "scale_1e6":
        pytest.skip("1e6 is not representable in float16")
    z = make_embeddings(kind).to(dtype)
    metric = accumulate(RankMe(mode=mode, center=center), z, seed=SPECTRA.index(kind) + 10 * DTYPES.index(dtype))
    assert value_of(metric) == pytest.approx(reference_rankme(z, center=center), rel=1e-6)


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("kind", SPECTRA)
@pytest.mark.parametrize("mode", MODES)
def test_summary_spectrum_matches_reference_singular_values(mode: str, kind: str, center: bool) -> None:
    z = make_embeddings(kind)
    metric = accumulate(RankMe(mode=mode, center=center), z, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        spectrum = metric.summary().singular_values
    expected = reference_singular_values(z, center=center)
    assert spectrum.dtype == torch.float64
    assert spectrum.shape == (min(z.shape),)
    assert bool((spectrum[:-1] >= spectrum[1:]).all()), "descending"
    np.testing.assert_allclose(spectrum.numpy(), expected, rtol=1e-6, atol=1e-7 * expected[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("n", "d"), [(50, 12), (7, 12)], ids=["N>D", "N<D"])
def test_summary_reports_value_sizes_and_normalized(mode: str, n: int, d: int) -> None:
    z = make_embeddings("gaussian", n=n, d=d)
    metric = accumulate(RankMe(mode=mode), z, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        summary = metric.summary()
    assert isinstance(summary, RankMeSummary)
    assert (summary.num_samples, summary.num_features) == (n, d)
    assert summary.value.item() == pytest.approx(reference_rankme(z), rel=1e-6)
    assert summary.normalized == pytest.approx(reference_rankme(z) / min(n, d), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_compute_returns_a_0_dim_default_float_tensor_on_the_metric_device(mode: str) -> None:
    metric = accumulate(RankMe(mode=mode), make_embeddings("gaussian").half())
    value = metric.compute()
    assert value.shape == ()
    assert value.dtype == torch.get_default_dtype()
    assert value.device == metric.device


# ---------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@PROPERTY_SETTINGS
@given(z=embedding_matrices(), center=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_any_batch_split_equals_reference(mode: str, z: torch.Tensor, center: bool, seed: int) -> None:
    metric = accumulate(RankMe(mode=mode, center=center), z, seed=seed)
    assert value_of(metric) == pytest.approx(reference_rankme(z, center=center), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
@PROPERTY_SETTINGS
@given(z=embedding_matrices(), seed=st.integers(0, 2**31 - 1))
def test_property_invariant_to_row_permutation(mode: str, z: torch.Tensor, seed: int) -> None:
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
    original = value_of(accumulate(RankMe(mode=mode), z, seed=seed))
    permuted = value_of(accumulate(RankMe(mode=mode), z[perm], seed=seed + 1))
    assert permuted == pytest.approx(original, rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
@PROPERTY_SETTINGS
@given(z=embedding_matrices(), seed=st.integers(0, 2**31 - 1))
def test_property_invariant_to_orthogonal_rotation_of_features(mode: str, z: torch.Tensor, seed: int) -> None:
    d = z.shape[1]
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    original = value_of(accumulate(RankMe(mode=mode), z, seed=seed))
    rotated = value_of(accumulate(RankMe(mode=mode), z @ q, seed=seed))
    assert rotated == pytest.approx(original, rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
@PROPERTY_SETTINGS
@given(z=embedding_matrices(), log_scale=st.floats(-3, 3), seed=st.integers(0, 2**31 - 1))
def test_property_invariant_to_positive_scaling(mode: str, z: torch.Tensor, log_scale: float, seed: int) -> None:
    original = value_of(accumulate(RankMe(mode=mode), z, seed=seed))
    scaled = value_of(accumulate(RankMe(mode=mode), 10**log_scale * z, seed=seed))
    assert scaled == pytest.approx(original, rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
@PROPERTY_SETTINGS
@given(z=embedding_matrices(), center=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_between_one_and_min_n_d(mode: str, z: torch.Tensor, center: bool, seed: int) -> None:
    value = value_of(accumulate(RankMe(mode=mode, center=center), z, seed=seed))
    assert 1 - 1e-6 <= value <= min(z.shape) * (1 + 1e-5)  # eps=1e-7 can lift it a hair above the bound


# ---------------------------------------------------------------------------------------------------------
# State size and max_samples
# ---------------------------------------------------------------------------------------------------------


def test_gram_state_size_does_not_depend_on_the_number_of_samples() -> None:
    def sizes(n: int) -> tuple[int, int]:
        metric = accumulate(RankMe(mode="gram"), make_embeddings("gaussian", n=n, d=16))
        numel = sum(t.numel() for ts in state_snapshot(metric).values() for t in ts)
        metric.persistent(True)
        saved = sum(t.numel() for t in metric.state_dict().values())
        return numel, saved

    assert sizes(100) == sizes(10_000)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_max_samples_keeps_exactly_the_first_rows(mode: str, seed: int) -> None:
    z = make_embeddings("gaussian", n=120, d=8, seed=seed)
    metric = accumulate(RankMe(mode=mode, max_samples=50), z, seed=seed)
    summary = metric.summary()
    assert summary.num_samples == 50
    assert summary.value.item() == pytest.approx(reference_rankme(z[:50]), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_max_samples_above_the_data_keeps_every_row(mode: str) -> None:
    z = make_embeddings("gaussian", n=40, d=8)
    metric = accumulate(RankMe(mode=mode, max_samples=1000), z)
    assert metric.summary().num_samples == 40
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"mode": "svd"}, "mode"),
        ({"eps": -1e-7}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"max_samples": 0}, "max_samples"),
        ({"max_samples": -5}, "max_samples"),
        ({"max_samples": True}, "max_samples"),
        ({"max_samples": 2.5}, "max_samples"),
        ({"nan_strategy": "drop"}, "nan_strategy"),
        ({"center": "yes"}, "center"),
    ],
    ids=repr,
)
def test_invalid_constructor_argument_is_named_in_the_error(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        RankMe(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(), (8,), (4, 8, 2)], ids=["0-D", "1-D", "3-D"])
@pytest.mark.parametrize("mode", MODES)
def test_update_rejects_input_that_is_not_2d(mode: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(batch, features\)"):
        RankMe(mode=mode).update(torch.ones(shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_update_rejects_non_floating_input(mode: str, dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match="floating-point"):
        RankMe(mode=mode).update(torch.ones(8, 4, dtype=dtype))


@pytest.mark.parametrize("mode", MODES)
def test_update_rejects_a_feature_size_that_changes_and_keeps_the_state(mode: str) -> None:
    z = make_embeddings("gaussian", n=30, d=8)
    metric = accumulate(RankMe(mode=mode), z)
    before = state_snapshot(metric)
    with pytest.raises(ValueError, match=r"Expected 8 features.*\(5, 9\).*reset"):
        metric.update(torch.randn(5, 9))
    assert_same_state(before, state_snapshot(metric))
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


@pytest.mark.parametrize("earlier_rows", [0, 30], ids=["first-batch", "later-batch"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("mode", MODES)
def test_non_finite_batch_raises_and_leaves_the_state_exactly_unchanged(
    mode: str, bad: float, earlier_rows: int
) -> None:
    z = make_embeddings("gaussian", n=earlier_rows + 10, d=8)
    metric = accumulate(RankMe(mode=mode, nan_strategy="error"), z[:earlier_rows])
    value_before = value_of(metric) if earlier_rows else None
    before = state_snapshot(metric)
    batch = z[earlier_rows:].clone()
    batch[4, 2] = bad
    with pytest.raises(ValueError, match="nan_strategy"):
        metric.update(batch)
    assert_same_state(before, state_snapshot(metric))
    if value_before is not None:
        assert value_of(metric) == value_before


@pytest.mark.parametrize("mode", MODES)
def test_nan_strategy_ignore_drops_non_finite_rows_with_a_counting_warning(mode: str) -> None:
    z = make_embeddings("gaussian", n=20, d=8)
    bad = z.clone()
    bad[[2, 7, 11], [0, 3, 5]] = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
    metric = RankMe(mode=mode, nan_strategy="ignore")
    with pytest.warns(RankMeWarning, match="Dropped 3 of 20 rows"):
        metric.update(bad)
    keep = torch.ones(20, dtype=torch.bool)
    keep[[2, 7, 11]] = False
    assert metric.summary().num_samples == 17
    assert value_of(metric) == pytest.approx(reference_rankme(z[keep]), rel=1e-6)


@pytest.mark.parametrize("feed", ["nothing", "empty-batch", "only-non-finite"])
@pytest.mark.parametrize("mode", MODES)
def test_compute_without_samples_raises(mode: str, feed: str) -> None:
    metric = RankMe(mode=mode, nan_strategy="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' "compute before update", the dropped-rows warning
        if feed == "empty-batch":
            metric.update(torch.zeros(0, 8))
        elif feed == "only-non-finite":
            metric.update(torch.full((4, 8), math.nan))
        with pytest.raises(ValueError, match="no samples"):
            metric.compute()


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("mode", MODES)
def test_all_zero_embeddings_give_exactly_one_with_a_warning(mode: str, center: bool) -> None:
    metric = RankMe(mode=mode, center=center)
    for batch in torch.zeros(40, 8).split(16):
        metric.update(batch)
    with pytest.warns(RankMeWarning, match="zero"):
        value = metric.compute()
    assert math.isfinite(value.item())
    assert value.item() == 1.0


@pytest.mark.parametrize("d", [64, 2048])
def test_constant_rows_centred_read_as_collapsed_in_gram_mode(d: int) -> None:
    # G - s s^T / N would turn rounding noise into rank (about 24 at D=64, 270 at D=2048); the running
    # scatter about the mean is exactly zero for identical rows.
    row = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 100 + 1e3
    metric = RankMe(mode="gram", center=True)
    for batch in row.expand(2048, d).split(300):
        metric.update(batch)
    with pytest.warns(RankMeWarning, match="zero"):
        assert metric.compute().item() == 1.0


@pytest.mark.parametrize("mode", MODES)
def test_capped_warning_is_given_once_per_metric(mode: str) -> None:
    z = make_embeddings("gaussian", n=10, d=16)
    metric = RankMe(mode=mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric.update(z[:5])
        metric.compute()
        metric.summary()
        metric.update(z[5:])
        metric.compute()
    capped = [w for w in caught if issubclass(w.category, RankMeWarning) and "capped by N" in str(w.message)]
    assert len(capped) == 1


@pytest.mark.parametrize("mode", MODES)
def test_no_capped_warning_when_n_at_least_d(mode: str) -> None:
    metric = accumulate(RankMe(mode=mode), make_embeddings("gaussian", n=16, d=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankMeWarning)
        metric.compute()


@pytest.mark.parametrize("call", ["update", "forward"])
@pytest.mark.parametrize("mode", MODES)
def test_inputs_requiring_grad_keep_no_graph(mode: str, call: str) -> None:
    leaf = make_embeddings("gaussian", n=30, d=8).requires_grad_(True)
    metric = RankMe(mode=mode)
    for batch in (leaf * 2).split(10):
        batch_value = metric(batch) if call == "forward" else metric.update(batch)
        if batch_value is not None:
            assert not batch_value.requires_grad
    for tensors in state_snapshot(metric).values():
        assert all(not t.requires_grad and t.grad_fn is None for t in tensors)
    for value in metric.metric_state.values():
        assert all(not t.requires_grad for t in (value if isinstance(value, list) else [value]))
    assert not metric.compute().requires_grad


# ---------------------------------------------------------------------------------------------------------
# torchmetrics machinery: forward, merge_state, reset, dtype and device moves
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("mode", MODES)
def test_forward_returns_the_batch_value_and_accumulates(mode: str, center: bool) -> None:
    z = make_embeddings("relu", n=90, d=12)
    metric = RankMe(mode=mode, center=center)
    for batch in z.split(30):
        assert metric(batch).item() == pytest.approx(reference_rankme(batch, center=center), rel=1e-6)
    assert metric.summary().num_samples == 90
    assert metric.compute().item() == pytest.approx(reference_rankme(z, center=center), rel=1e-6)


@pytest.mark.parametrize("split", [0, 37, 90], ids=["empty-into-full", "halves", "full-into-empty"])
@pytest.mark.parametrize("mode", MODES)
def test_merge_state_equals_one_metric_over_all_rows(mode: str, split: int) -> None:
    z = make_embeddings("low_rank", n=90, d=12)
    first, second = RankMe(mode=mode, center=True), RankMe(mode=mode, center=True)
    accumulate(first, z[:split], seed=1)
    accumulate(second, z[split:], seed=2)
    first.merge_state(second)
    assert first.summary().num_samples == 90
    assert value_of(first) == pytest.approx(reference_rankme(z, center=True), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_reset_forgets_the_rows_and_the_feature_size(mode: str) -> None:
    metric = accumulate(RankMe(mode=mode), make_embeddings("gaussian", n=40, d=8))
    metric.compute()
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' "compute before update"
        with pytest.raises(ValueError, match="no samples"):
            metric.compute()
    other = make_embeddings("low_rank", n=30, d=5, seed=4)
    accumulate(metric, other)
    assert metric.summary().num_features == 5
    assert value_of(metric) == pytest.approx(reference_rankme(other), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("cast", ["to", "set_dtype"])
@pytest.mark.parametrize("mode", MODES)
def test_dtype_casts_keep_float64_states_and_the_exact_value(mode: str, cast: str, dtype: torch.dtype) -> None:
    z = make_embeddings("near_collapsed", n=60, d=12)
    metric = accumulate(RankMe(mode=mode), z[:30])
    metric = metric.to(dtype) if cast == "to" else metric.set_dtype(dtype)
    accumulate(metric, z[30:])
    assert metric.num_rows.dtype == metric.non_finite_batches.dtype == torch.int64
    for name, tensors in state_snapshot(metric).items():
        if name not in ("num_rows", "non_finite_batches"):
            assert all(t.dtype == torch.float64 for t in tensors), name
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_device_move_keeps_the_state(mode: str) -> None:
    z = make_embeddings("gaussian", n=40, d=8)
    metric = accumulate(RankMe(mode=mode), z[:20]).to("cpu")
    accumulate(metric, z[20:])
    assert metric.device == torch.device("cpu")
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("kind", SPECTRA)
@pytest.mark.parametrize("mode", MODES)
def test_on_cuda_matches_the_reference_and_keeps_float64_states(
    mode: str, kind: str, center: bool, dtype: torch.dtype
) -> None:
    z = make_embeddings(kind).to(dtype)
    metric = accumulate(RankMe(mode=mode, center=center).to("cuda"), z.cuda(), seed=SPECTRA.index(kind))
    for name, tensors in state_snapshot(metric).items():
        assert all(t.device.type == "cuda" for t in tensors), name
        if name != "num_rows":
            assert all(t.dtype == torch.float64 for t in tensors), name
    assert value_of(metric) == pytest.approx(reference_rankme(z, center=center), rel=1e-6)
    before = state_snapshot(metric)
    with pytest.raises(ValueError, match="nothing from this batch was added"):
        metric.update(torch.full((2, z.shape[1]), math.nan, device="cuda"))
    assert_same_state(before, state_snapshot(metric))


@pytest.mark.parametrize("bad_batch", ["nan", "other-d", "all-dropped"])
@pytest.mark.parametrize("mode", MODES)
def test_forward_with_a_bad_batch_keeps_the_state(mode: str, bad_batch: str) -> None:
    z = make_embeddings("gaussian", n=40, d=8)
    metric = accumulate(RankMe(mode=mode, nan_strategy="ignore" if bad_batch == "all-dropped" else "error"), z)
    before = state_snapshot(metric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        if bad_batch == "nan":
            with pytest.raises(ValueError, match="nan_strategy"):
                metric(torch.full((3, 8), math.nan))
        elif bad_batch == "other-d":
            with pytest.raises(ValueError, match="Expected 8 features"):
                metric(torch.randn(3, 9))
        else:
            assert math.isnan(metric(torch.full((3, 8), math.nan)).item())
    assert_same_state(before, state_snapshot(metric))
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_forward_respects_max_samples(mode: str) -> None:
    z = make_embeddings("gaussian", n=60, d=8)
    metric = RankMe(mode=mode, max_samples=25)
    for batch in z.split(10):
        metric(batch)
    assert metric.summary().num_samples == 25
    assert value_of(metric) == pytest.approx(reference_rankme(z[:25]), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_eps_zero_with_exactly_zero_singular_values_is_finite(mode: str) -> None:
    z = make_embeddings("gaussian", n=100, d=8)
    z[:, :2] = 0  # dead units: exactly zero singular values
    metric = accumulate(RankMe(mode=mode, eps=0.0), z)
    value = value_of(metric)
    assert math.isfinite(value)
    assert value == pytest.approx(reference_rankme(z, eps=0.0), rel=1e-6)
    assert rankme(z, eps=0.0).item() == pytest.approx(reference_rankme(z, eps=0.0), rel=1e-6)


def test_embeddings_mode_copies_a_reused_input_buffer() -> None:
    z = make_embeddings("gaussian", n=40, d=8)
    metric = RankMe(mode="embeddings")
    buffer = torch.empty(10, 8, dtype=torch.float64)
    for batch in z.split(10):
        buffer.copy_(batch)  # a data pipeline that reuses its output buffer
        metric.update(buffer)
    assert value_of(metric) == pytest.approx(reference_rankme(z), rel=1e-6)


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("kind", ["gaussian", "low_rank", "relu"])
def test_blocked_lower_triangle_update_is_exact_at_large_d(kind: str, center: bool) -> None:
    # D >= 256 takes the blocked update (blocks of 64 here, the last one partial)
    z = make_embeddings(kind, n=400, d=300)
    metric = RankMe(center=center)
    for batch in random_batches(z, seed=3):
        metric.update(batch)
    assert value_of(metric) == pytest.approx(reference_rankme(z, center=center), rel=1e-6)
    reference = reference_singular_values(z, center=center)
    # singular values far below s_1 sit at the float64 Gram's rounding floor (about 1e-8 s_1, see the docs)
    np.testing.assert_allclose(metric.summary().singular_values.numpy(), reference, rtol=1e-6, atol=1e-7 * reference[0])
