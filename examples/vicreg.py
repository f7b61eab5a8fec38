"""VICReg (Bardes, Ponce, LeCun, ICLR 2022) on the offline digits: its loss, and the model that minimises it.

The data, augmentation, backbone, projector and learning-rate schedule are the shared ones of
:class:`digits.DigitsSSL`; this file holds what is VICReg's own: the invariance, variance and covariance terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from digits import DigitsSSL
from torch import Tensor
from typing_extensions import override

__all__ = ["VICReg", "vicreg_loss"]


def vicreg_loss(
    z_a: Tensor, z_b: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0
) -> dict[str, Tensor]:
    """VICReg's loss of two (B, D) batches of projections: invariance, variance and covariance terms.

    Returns a dict with the weighted total under ``"loss"`` and the three unweighted terms.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> z = torch.randn(256, 16)
        >>> terms = vicreg_loss(z, z)
        >>> float(terms["invariance"]), float(terms["variance"]) < 0.1
        (0.0, True)
    """
    invariance = F.mse_loss(z_a, z_b)
    z_a = z_a - z_a.mean(dim=0)
    z_b = z_b - z_b.mean(dim=0)
    std_a = torch.sqrt(z_a.var(dim=0) + 1e-4)
    std_b = torch.sqrt(z_b.var(dim=0) + 1e-4)
    variance = (F.relu(1 - std_a).mean() + F.relu(1 - std_b).mean()) / 2
    n, d = z_a.shape
    cov_a = (z_a.T @ z_a) / (n - 1)
    cov_b = (z_b.T @ z_b) / (n - 1)
    off_diagonal = ~torch.eye(d, dtype=torch.bool, device=z_a.device)
    covariance = cov_a[off_diagonal].pow(2).sum() / d + cov_b[off_diagonal].pow(2).sum() / d
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return {"loss": loss, "invariance": invariance, "variance": variance, "covariance": covariance}


class VICReg(DigitsSSL):
    """VICReg on 8 x 8 digits: :class:`digits.DigitsSSL` trained with :func:`vicreg_loss`.

    Args:
        feature_dim: width of the backbone's output (the representation that is probed).
        projector_dim: width of the projector's hidden and output layers.
        sim_coeff: weight of the invariance term (VICReg's lambda).
        std_coeff: weight of the variance term (mu).
        cov_coeff: weight of the covariance term (nu).
        lr: peak AdamW learning rate (linear warm-up, then cosine decay).
        weight_decay: AdamW weight decay.
        augment_strength: multiplies the ranges of the augmentation.
        warmup_epochs: epochs of linear learning-rate warm-up.

    Example:
        >>> import torch
        >>> model = VICReg()
        >>> model.backbone(torch.rand(3, 1, 8, 8)).shape, model(torch.rand(3, 1, 8, 8)).shape
        (torch.Size([3, 64]), torch.Size([3, 128]))
    """

    def __init__(
        self,
        feature_dim: int = 64,
        projector_dim: int = 128,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        augment_strength: float = 1.0,
        warmup_epochs: int = 10,
    ) -> None:
        super().__init__(feature_dim, projector_dim, lr, weight_decay, augment_strength, warmup_epochs)
        self.save_hyperparameters()

    @override
    def loss_terms(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        return vicreg_loss(
            z_a,
            z_b,
            sim_coeff=self.hparams["sim_coeff"],
            std_coeff=self.hparams["std_coeff"],
            cov_coeff=self.hparams["cov_coeff"],
        )
