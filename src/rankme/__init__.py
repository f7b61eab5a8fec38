"""rankme: label-free monitoring of self-supervised representations with RankMe.

RankMe (Garrido, Balestriero, Najman, LeCun, ICML 2023) is the effective rank of an encoder's
embeddings: about 1 for a collapsed encoder, up to min(N, D) for one that uses every dimension.

>>> import torch
>>> from rankme import rankme
>>> round(rankme(torch.eye(4)).item(), 3)
4.0
"""

from rankme.callback import RankMeCallback
from rankme.functional import RankMeWarning, rankme
from rankme.metric import RankMe, RankMeSummary

__all__ = ["RankMe", "RankMeCallback", "RankMeSummary", "RankMeWarning", "rankme"]
__version__ = "0.1.0"
