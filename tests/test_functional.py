"""The functional `rankme(z, eps, center)` against an independent float64 SVD reference."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import SPECTRA, embedding_matrices, make_embeddings, reference_rankme
from hypothesis import given, settings
from hypothesis import strategies as st

from rankme import RankMeWarning, rankme

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::rankme.RankMeWarning")  # N < D for the few_samples spectrum
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
@pytest.mark.parametrize("kind", SPECTRA)
def test_matches_float64_svd_reference(kind: str, center: bool, dtype: torch.dtype) -> None:
    if dtype == torch.float16 and kind == "scale_1e6":
        pytest.skip("1e6 is not representable in float16")
    z = make_embeddings(kind).to(dtype)
    expected = reference_rankme(z, center=center)  # on the same (rounded) values, upcast to float64
    assert rankme(z, center=center).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 1e-5, 1e-3])
def test_eps_is_the_papers_smoothing_constant(eps: float) -> None:
    z = make_embeddings("low_rank", n=60, d=10)
    assert rankme(z, eps=eps).item() == pytest.approx(reference_rankme(z, eps=eps), rel=1e-6)


def test_identity_has_rankme_equal_to_its_size() -> None:
    # equal singular values: p_k = 1/D (+ eps), so the effective rank is D
    assert rankme(torch.eye(16, dtype=torch.float64)).item() == pytest.approx(16, rel=1e-5)


def test_returns_a_0_dim_tensor_of_the_default_dtype_on_the_input_device() -> None:
    value = rankme(make_embeddings("gaussian").half())
    assert value.shape == ()
    assert value.dtype == torch.get_default_dtype()
    assert value.device == torch.device("cpu")


def test_keeps_no_autograd_graph() -> None:
    z = make_embeddings("gaussian").requires_grad_(True)
    value = rankme(z * 2)
    assert not value.requires_grad
    assert value.grad_fn is None


# ---------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(z=embedding_matrices(), center=st.booleans())
def test_property_equals_reference(z: torch.Tensor, center: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        value = rankme(z, center=center).item()
    assert value == pytest.approx(reference_rankme(z, center=center), rel=1e-6)


@PROPERTY_SETTINGS
@given(z=embedding_matrices(), seed=st.integers(0, 2**31 - 1))
def test_property_invariant_to_row_permutation(z: torch.Tensor, seed: int) -> None:
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        assert rankme(z[perm]).item() == pytest.approx(rankme(z).item(), rel=1e-6)


@PROPERTY_SETTINGS
@given(z=embedding_matrices(), seed=st.integers(0, 2**31 - 1))
def test_property_invariant_to_orthogonal_rotation_of_features(z: torch.Tensor, seed: int) -> None:
    d = z.shape[1]
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        assert rankme(z @ q).item() == pytest.approx(rankme(z).item(), rel=1e-6)


@PROPERTY_SETTINGS
@given(z=embedding_matrices(), log_scale=st.floats(-3, 3))
def test_property_invariant_to_positive_scaling(z: torch.Tensor, log_scale: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        assert rankme(10**log_scale * z).item() == pytest.approx(rankme(z).item(), rel=1e-6)


@PROPERTY_SETTINGS
@given(z=embedding_matrices(), center=st.booleans())
def test_property_between_one_and_min_n_d(z: torch.Tensor, center: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        value = rankme(z, center=center).item()
    assert 1 - 1e-6 <= value <= min(z.shape) * (1 + 1e-5)  # eps=1e-7 can lift it a hair above the bound


# ---------------------------------------------------------------------------------------------------------
# Bad input and edge cases
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (8,), (4, 8, 2)], ids=["0-D", "1-D", "3-D"])
def test_rejects_input_that_is_not_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(batch, features\)"):
        rankme(torch.ones(shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool], ids=str)
def test_rejects_non_floating_input(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match="floating-point"):
        rankme(torch.ones(8, 4, dtype=dtype))


def test_rejects_input_without_rows() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        rankme(torch.ones(0, 4))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_rejects_non_finite_input(bad: float) -> None:
    z = make_embeddings("gaussian")
    z[3, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        rankme(z)


@pytest.mark.parametrize("eps", [-1e-7, math.nan, math.inf, True, "1e-7"], ids=repr)
def test_rejects_invalid_eps(eps: object) -> None:
    with pytest.raises(ValueError, match="`eps`"):
        rankme(make_embeddings("gaussian"), eps=eps)  # type: ignore[arg-type]


@pytest.mark.parametrize("center", [False, True], ids=["uncentred", "centred"])
def test_all_zero_embeddings_give_exactly_one_with_a_warning(center: bool) -> None:
    with pytest.warns(RankMeWarning, match="zero"):
        value = rankme(torch.zeros(32, 8), center=center)
    assert value.item() == 1.0


def test_warns_that_the_value_is_capped_when_n_below_d() -> None:
    with pytest.warns(RankMeWarning, match="capped by N"):
        rankme(make_embeddings("few_samples"))


def test_no_capped_warning_when_n_at_least_d() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankMeWarning)
        rankme(make_embeddings("gaussian", n=24, d=24))
