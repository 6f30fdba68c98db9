"""The training loss: masked BCE plus a soft Dice/Jaccard term from ``smp.losses``.

Pixels where the loss mask is 0 (the reflection-padded border around each crop, and
anything outside the original image) do not contribute: changing the predictions there
leaves the loss unchanged.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_IGNORE = -1


class MaskedLoss(nn.Module):
    """``bce * BCE + soft_weight * soft`` with per-channel weights, over unmasked pixels.

    Args:
        config: a :class:`competition.train.recipe.LossConfig`.

    Call with ``(logits, targets, mask)``:
        logits: N×C×H×W raw network outputs.
        targets: N×C×H×W float 0/1.
        mask: N×1×H×W (or N×H×W) float/bool, 1 where the loss counts.

    Returns a scalar tensor. Shapes: as above.
    """

    def __init__(self, config) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.bce_weight = float(config.bce)
        self.soft_weight = float(config.soft_weight) if config.soft != "none" else 0.0
        weights = torch.tensor(config.channel_weights, dtype=torch.float32)
        self.register_buffer("channel_weights", weights / weights.sum(), persistent=False)
        soft_cls = {"dice": smp.losses.DiceLoss, "jaccard": smp.losses.JaccardLoss,
                    "none": None}[config.soft]
        self.soft = None
        if soft_cls is not None:
            self.soft = soft_cls(mode="multilabel", from_logits=True, log_loss=config.log_soft,
                                 ignore_index=_IGNORE)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if mask.dim() == 3:
            mask = mask[:, None]
        mask = mask.to(logits.dtype)
        n_valid = mask.sum().clamp_min(1.0)
        total = logits.new_zeros(())
        if self.bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            per_channel = (bce * mask).sum(dim=(0, 2, 3)) / n_valid
            total = total + self.bce_weight * (per_channel * self.channel_weights).sum()
        if self.soft is not None and self.soft_weight:
            ignored = torch.where(mask.expand_as(targets) > 0, targets,
                                  torch.full_like(targets, _IGNORE))
            # smp aggregates per channel; weight channels ourselves (one call per channel
            # keeps smp's "absent channel contributes 0" rule per channel).
            soft = logits.new_zeros(())
            for c in range(logits.shape[1]):
                soft = soft + self.channel_weights[c] * self.soft(logits[:, c:c + 1],
                                                                   ignored[:, c:c + 1])
            total = total + self.soft_weight * soft
        return total
