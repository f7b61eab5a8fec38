"""rankme: label-free monitoring of self-supervised representations with RankMe.

RankMe (Garrido, Balestriero, Najman, LeCun, ICML 2023) is the effective rank of an encoder's
embeddings: about 1 for a collapsed encoder, up to min(N, D) for one that uses every dimension.

>>> import torch
>>> from rankme import rankme
>>> round(rankme(torch.eye(4)).item(), 3)
4.0
"""

from typing import TYPE_CHECKING, Any

from rankme.functional import RankMeWarning, rankme
from rankme.metric import RankMe, RankMeSummary

if TYPE_CHECKING:
    from rankme.callback import RankMeCallback

__all__ = ["RankMe", "RankMeCallback", "RankMeSummary", "RankMeWarning", "rankme"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The callback imports lightning (seconds); load it only when asked, so the metric and the CLI start fast.
    if name == "RankMeCallback":
        from rankme.callback import RankMeCallback

        return RankMeCallback
    raise AttributeError(f"module 'rankme' has no attribute {name!r}")
