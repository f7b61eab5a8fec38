"""rankme: label-free monitoring of self-supervised representations with RankMe.

RankMe (Garrido, Balestriero, Najman, LeCun, ICML 2023) is the effective rank of an encoder's
embeddings: about 1 for a collapsed encoder, up to min(N, D) for one that uses every dimension.

>>> import torch
>>> from rankme import rankme
>>> round(rankme(torch.eye(4)).item(), 3)
4.0
"""

import importlib
from typing import TYPE_CHECKING, Any

from rankme.functional import RankMeNoSamplesError, RankMeWarning, rankme
from rankme.metric import RankMe, RankMeSummary

if TYPE_CHECKING:
    from rankme.callback import RankMeCallback
    from rankme.selection import RankMeCollapseGuard, WarmupEarlyStopping, WarmupModelCheckpoint

__all__ = [
    "RankMe",
    "RankMeCallback",
    "RankMeCollapseGuard",
    "RankMeNoSamplesError",
    "RankMeSummary",
    "RankMeWarning",
    "WarmupEarlyStopping",
    "WarmupModelCheckpoint",
    "rankme",
]
__version__ = "0.1.0"

# These import lightning (seconds): load them only when asked, so the metric and the CLI start fast.
_LIGHTNING_NAMES = {
    "RankMeCallback": "rankme.callback",
    "RankMeCollapseGuard": "rankme.selection",
    "WarmupEarlyStopping": "rankme.selection",
    "WarmupModelCheckpoint": "rankme.selection",
}


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_NAMES:
        return getattr(importlib.import_module(_LIGHTNING_NAMES[name]), name)
    raise AttributeError(f"module 'rankme' has no attribute {name!r}")
