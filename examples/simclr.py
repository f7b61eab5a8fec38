"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020) on the offline digits: the NT-Xent loss and its model.

The data, augmentation, backbone, projector and learning-rate schedule are the shared ones of
:class:`digits.DigitsSSL`, as for ``vicreg.VICReg``; only the loss differs, so the two methods' RankMe curves
and probe accuracies can be compared epoch by epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from digits import DigitsSSL
from torch import Tensor
from typing_extensions import override

__all__ = ["SimCLR", "nt_xent_loss"]


def nt_xent_loss(z_a: Tensor, z_b: Tensor, temperature: float = 0.2) -> dict[str, Tensor]:
    """NT-Xent of two (B, D) batches of projections: row i of ``z_a`` and of ``z_b`` are views of one image.

    Each of the 2B projections is classified, by cosine similarity / ``temperature``, against the other 2B - 1:
    its positive is the other view of its image. Returns ``"loss"`` (the mean cross-entropy) and ``"accuracy"``
    (how often the positive is the most similar; a training diagnostic, no labels involved).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> z = torch.randn(64, 16)
        >>> same, other = nt_xent_loss(z, z), nt_xent_loss(z, torch.randn(64, 16))
        >>> float(same["accuracy"]), bool(same["loss"] < other["loss"])
        (1.0, True)
    """
    b = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    loss = F.cross_entropy(logits, positives)
    accuracy = (logits.argmax(dim=1) == positives).float().mean()
    return {"loss": loss, "accuracy": accuracy}


class SimCLR(DigitsSSL):
    """SimCLR on 8 x 8 digits: :class:`digits.DigitsSSL` trained with :func:`nt_xent_loss`.

    Args:
        feature_dim: width of the backbone's output (the representation that is probed).
        projector_dim: width of the projector's hidden and output layers.
        temperature: NT-Xent's softmax temperature.
        lr: peak AdamW learning rate (linear warm-up, then cosine decay).
        weight_decay: AdamW weight decay.
        augment_strength: multiplies the ranges of the augmentation.
        warmup_epochs: epochs of linear learning-rate warm-up.

    Example:
        >>> import torch
        >>> model = SimCLR(temperature=0.5)
        >>> model.hparams["temperature"], model(torch.rand(3, 1, 8, 8)).shape
        (0.5, torch.Size([3, 128]))
    """

    def __init__(
        self,
        feature_dim: int = 64,
        projector_dim: int = 128,
        temperature: float = 0.2,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        augment_strength: float = 1.0,
        warmup_epochs: int = 10,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"Expected argument `temperature` to be > 0, but got {temperature!r}.")
        super().__init__(feature_dim, projector_dim, lr, weight_decay, augment_strength, warmup_epochs)
        self.save_hyperparameters()

    @override
    def loss_terms(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        return nt_xent_loss(z_a, z_b, temperature=self.hparams["temperature"])
