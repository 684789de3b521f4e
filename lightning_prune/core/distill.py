"""Knowledge distillation: the loss term and a frozen, plain copy of a model to serve as the teacher.

Pure PyTorch. The ``Distillation`` callback (``lightning_prune.callbacks.distillation``) is the Lightning glue.

Example::

    >>> s, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[2.0, 0.0, -1.0]])
    >>> float(kd_loss(s, t, temperature=4.0))
    0.0
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured.reparam import pruned_names


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al. (2015): ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    The ``T**2`` factor keeps the gradient scale independent of the temperature. Logits of any leading shape
    are flattened to ``(N, classes)``; the teacher gets no gradient. Computed in float32 at least.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, classes).float() / temperature
    t = teacher_logits.detach().reshape(-1, classes).float() / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    return kl * temperature**2


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that is plain (no ``torch.nn.utils.prune`` reparametrisation or state-dict
    hooks), frozen (``requires_grad=False``) and in eval mode: a teacher that no optimizer, DDP or pruning
    callback ever touches (it is not a submodule of the model)."""
    teacher = copy.deepcopy(model)
    targets = [(name, pname) for name, module in teacher.named_modules() for pname in pruned_names(module)]
    if targets:
        mask_ops.make_permanent(teacher, targets)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


def distillation_loss(module: nn.Module, x: Any, logits: Tensor) -> Tensor:
    """The distillation term of the ``Distillation`` callback(s) in ``module``'s Trainer, for the batch ``x``
    whose student logits are ``logits``; 0 when there is none, outside a Trainer, or before the teacher exists.

    Add it to your training loss: ``loss = loss + distillation_loss(self, x, logits)``. Duck-typed (no Lightning
    import): every callback of the Trainer with ``adds_training_loss = True`` contributes ``cb.loss(module, x,
    logits)``.
    """
    total = logits.new_zeros(())
    if not module.training:
        return total
    try:
        trainer = module.trainer  # a LightningModule's property; raises when not attached to a Trainer
    except (AttributeError, RuntimeError):
        return total
    for cb in getattr(trainer, "callbacks", None) or []:
        if getattr(cb, "adds_training_loss", False):
            total = total + cb.loss(module, x, logits)
    return total


__all__ = ["distillation_loss", "frozen_copy", "kd_loss"]
