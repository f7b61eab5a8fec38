"""rankme: label-free monitoring of self-supervised representations with RankMe (Garrido et al., ICML 2023).

RankMe is the effective rank of an encoder's embeddings: about 1 for a collapsed encoder, up to min(N, D).
"""

import importlib
from typing import TYPE_CHECKING, Any

from rankme.functional import RankMeNoSamplesError, RankMeWarning, rankme
from rankme.metric import RankMe, RankMeSummary

if TYPE_CHECKING:
    from rankme.callback import RankMeCallback
    from rankme.selection import RankMeCollapseGuard, WarmupEarlyStopping, WarmupModelCheckpoint

__all__ = ["RankMe", "RankMeCallback", "RankMeCollapseGuard", "RankMeNoSamplesError", "RankMeSummary"]
__all__ += ["RankMeWarning", "WarmupEarlyStopping", "WarmupModelCheckpoint", "rankme"]
__version__ = "0.1.0"

# These import lightning (seconds): load them only when asked, so the metric and the CLI start fast.
_IN_SELECTION = ("RankMeCollapseGuard", "WarmupEarlyStopping", "WarmupModelCheckpoint")
_LIGHTNING_NAMES = {"RankMeCallback": "rankme.callback"} | dict.fromkeys(_IN_SELECTION, "rankme.selection")


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_NAMES:
        return getattr(importlib.import_module(_LIGHTNING_NAMES[name]), name)
    raise AttributeError(f"module 'rankme' has no attribute {name!r}")
