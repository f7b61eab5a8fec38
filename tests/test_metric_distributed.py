"""`RankMe` under real torch.distributed: 2 CPU processes in a gloo group, one launch for every scenario.

Each rank runs every scenario in `SCENARIOS` on its shard and writes what it computed (or the error it
raised) to a file; the tests compare those with the float64 reference over the rows all ranks kept.
"""

from __future__ import annotations

import datetime
import math
import socket
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_embeddings, random_batches, reference_rankme, reference_singular_values

from rankme import RankMe, RankMeWarning

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
MODES = ("gram", "embeddings")
LAUNCH_TIMEOUT_S = 120

# name -> (RankMe kwargs, {rank: shard of rows}, rows every rank's result must equal one process over)
# The shards are built from module-level seeds, so the spawned workers and the test process agree on them.
_Z = make_embeddings("relu", n=70, d=12, seed=11)
_OTHER_D = make_embeddings("gaussian", n=20, d=13, seed=12)
_CONSTANT = (make_embeddings("gaussian", n=1, d=12, seed=13) * 100 + 1e3).expand(70, 12).contiguous()
SCENARIOS: dict[str, tuple[dict[str, Any], dict[int, torch.Tensor], torch.Tensor | None]] = {
    "uneven": ({}, {0: _Z[:48], 1: _Z[48:]}, _Z),
    "uneven-centred": ({"center": True}, {0: _Z[:48], 1: _Z[48:]}, _Z),
    "rank1-no-samples": ({}, {0: _Z[:40], 1: _Z[:0]}, _Z[:40]),
    "rank0-no-samples-centred": ({"center": True}, {0: _Z[:0], 1: _Z[30:]}, _Z[30:]),
    # max_samples=25 over 2 ranks: rank 0 keeps its first 13 rows, rank 1 its first 12
    "max-samples": ({"max_samples": 25}, {0: _Z[:40], 1: _Z[40:]}, torch.cat([_Z[:13], _Z[40:52]])),
    "constant-rows-centred": ({"center": True}, {0: _CONSTANT[:30], 1: _CONSTANT[30:]}, None),
    "no-samples-anywhere": ({}, {0: _Z[:0], 1: _Z[:0]}, None),
    # Z^T Z of these rows overflows float64; the ranks' scales differ by 2^4, and both contribute
    "scales-differ": ({}, {0: _Z[:35] * 2.0**600, 1: _Z[35:] * 2.0**596}, torch.cat([_Z[:35], _Z[35:] * 2.0**-4])),
    "scales-differ-centred": (
        {"center": True},
        {0: _Z[:35] * 2.0**-600, 1: _Z[35:] * 2.0**-596},
        torch.cat([_Z[:35] * 2.0**-4, _Z[35:]]),
    ),
    # N < D overall: the capped warning comes from every rank's compute, and is given on rank 0 alone
    "few-rows": ({}, {0: _Z[:4], 1: _Z[4:9]}, _Z[:9]),
    "non-finite-on-rank-1": ({"nan_strategy": "propagate"}, {0: _Z[:30], 1: _Z[30:].clone().fill_(math.nan)}, None),
    "mismatched-features": ({}, {0: _Z[:20], 1: _OTHER_D}, None),
}


def _run_scenario(mode: str, kwargs: dict[str, Any], shard: torch.Tensor, rank: int) -> dict[str, Any]:
    metric = RankMe(mode=mode, **kwargs)
    if shard.shape[0]:  # a rank with no rows never calls update at all
        for batch in random_batches(shard, seed=rank):
            metric.update(batch)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = metric.compute()
            summary = metric.summary()
    except Exception as err:  # recorded, not raised: the tests check what every rank saw
        return {"error": f"{type(err).__name__}: {err}"}
    return {
        "warnings": [(w.category.__name__, str(w.message)) for w in caught if issubclass(w.category, RankMeWarning)],
        "value": value.item(),
        "singular_values": summary.singular_values,
        "num_samples": summary.num_samples,
        "num_features": summary.num_features,
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    """Run every scenario in a 2-process gloo group and save this rank's results (or its crash)."""
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=WORLD_SIZE,
            timeout=datetime.timedelta(seconds=60),
        )
        for name, (kwargs, shards, _) in SCENARIOS.items():
            for mode in MODES:
                results[f"{name}/{mode}"] = _run_scenario(mode, kwargs, shards[rank], rank)
        dist.destroy_process_group()
    except Exception:  # a crash or a collective timeout: report it instead of the results
        results["crash"] = traceback.format_exc()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Launch the group once; the results of every rank, in rank order."""
    out_dir = tmp_path_factory.mktemp("rankme-ddp")
    ctx = mp.get_context("spawn")
    port = _free_port()
    processes = [ctx.Process(target=_worker, args=(rank, port, str(out_dir))) for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(LAUNCH_TIMEOUT_S)
    hung = [process.pid for process in processes if process.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert not hung, f"worker processes {hung} hung past {LAUNCH_TIMEOUT_S}s"
    results = []
    for rank, process in enumerate(processes):
        path = out_dir / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} exited with code {process.exitcode} and wrote no results"
        result = torch.load(path, weights_only=False)
        assert "crash" not in result, f"rank {rank} crashed:\n{result['crash']}"
        results.append(result)
    return results


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "scenario",
    [
        "uneven",
        "uneven-centred",
        "rank1-no-samples",
        "rank0-no-samples-centred",
        "max-samples",
        "scales-differ",
        "scales-differ-centred",
        "few-rows",
    ],
)
def test_every_rank_gets_the_value_of_one_process_over_all_rows(
    per_rank: list[dict[str, Any]], scenario: str, mode: str
) -> None:
    kwargs, _, rows = SCENARIOS[scenario]
    assert rows is not None
    expected = reference_rankme(rows, center=kwargs.get("center", False))
    results = [result[f"{scenario}/{mode}"] for result in per_rank]
    for rank, result in enumerate(results):
        assert "error" not in result, f"rank {rank}: {result['error']}"
        assert result["value"] == pytest.approx(expected, rel=1e-6), f"rank {rank}"
        assert (result["num_samples"], result["num_features"]) == tuple(rows.shape), f"rank {rank}"
    assert results[0]["value"] == results[1]["value"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scenario", ["uneven", "rank1-no-samples"])
def test_every_rank_gets_the_spectrum_of_all_rows(per_rank: list[dict[str, Any]], scenario: str, mode: str) -> None:
    _, _, rows = SCENARIOS[scenario]
    assert rows is not None
    expected = torch.from_numpy(reference_singular_values(rows))
    for result in per_rank:
        spectrum = result[f"{scenario}/{mode}"]["singular_values"]
        torch.testing.assert_close(spectrum, expected, rtol=1e-6, atol=1e-7 * float(expected[0]))
    assert torch.equal(
        per_rank[0][f"{scenario}/{mode}"]["singular_values"], per_rank[1][f"{scenario}/{mode}"]["singular_values"]
    )


@pytest.mark.parametrize("mode", MODES)
def test_no_samples_on_any_rank_raises_on_every_rank(per_rank: list[dict[str, Any]], mode: str) -> None:
    for result in per_rank:
        error = result[f"no-samples-anywhere/{mode}"].get("error", "")
        assert error.startswith("RankMeNoSamplesError: ")  # a ValueError subclass of its own
        assert "no samples" in error


@pytest.mark.parametrize("mode", MODES)
def test_mismatched_feature_sizes_raise_on_every_rank(per_rank: list[dict[str, Any]], mode: str) -> None:
    for result in per_rank:
        error = result[f"mismatched-features/{mode}"].get("error", "")
        assert error.startswith("ValueError: ")
        assert "[12, 13]" in error
        assert "same layer" in error


@pytest.mark.parametrize("mode", MODES)
def test_identical_rows_on_every_rank_read_as_collapsed_when_centred(per_rank: list[dict[str, Any]], mode: str) -> None:
    # Re-centring each rank's scatter on the global mean must not turn rounding noise into rank.
    for rank, result in enumerate(result["constant-rows-centred/" + mode] for result in per_rank):
        assert "error" not in result, f"rank {rank}: {result['error']}"
        assert 1.0 <= result["value"] < 1.001, f"rank {rank}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("scenario", "message"), [("few-rows", "capped by N"), ("non-finite-on-rank-1", "RankMe is NaN")]
)
def test_a_warning_about_the_synced_value_is_given_on_rank_zero_alone(
    per_rank: list[dict[str, Any]], scenario: str, mode: str, message: str
) -> None:
    results = [result[f"{scenario}/{mode}"] for result in per_rank]
    for rank, result in enumerate(results):
        assert "error" not in result, f"rank {rank}: {result['error']}"
    assert [(category, message in text) for category, text in results[0]["warnings"]] == [("RankMeWarning", True)]
    assert results[1]["warnings"] == []
    if scenario == "non-finite-on-rank-1":
        assert all(math.isnan(result["value"]) for result in results)
