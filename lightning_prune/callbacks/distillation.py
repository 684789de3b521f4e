"""``Distillation``: knowledge distillation from the model before pruning into the model being pruned."""

from __future__ import annotations

import numbers
import os
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._scheduled import ScheduledPruning, starts_from_trained
from lightning_prune.callbacks._sharded import check_strategy
from lightning_prune.callbacks.support import record_options, refuse_unsupported
from lightning_prune.core._validation import check_bool, check_choice
from lightning_prune.core.channel.decoder_io import reshape_decoder_to_state_dict
from lightning_prune.core.channel.experts_io import reshape_experts_to_state_dict
from lightning_prune.core.channel.reshape import reshape_to_state_dict
from lightning_prune.core.distill import frozen_copy, kd_loss

_STATE_VERSION = 1

TeacherSource = Literal["auto", "first_event"]
TEACHERS: tuple[TeacherSource, ...] = ("auto", "first_event")

NO_TEACHER_WARNING = (
    "Distillation: this run trains from scratch and has no trained teacher, so it distils nothing. Pass "
    "`teacher_checkpoint=...`, start from trained weights (`init_from_checkpoint=...` or "
    "`starts_from_trained_weights = True` on your module), or set `teacher='first_event'` (see docs/quality.md)"
)


def _check_positive(arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ValueError(f"`{arg}` must be a positive float; got {value!r}")
    return float(value)


@record_options
class Distillation(Callback):
    """Distil a trained, unpruned model into the model being pruned: a frozen teacher, a KL term on the logits.

    The teacher must be a trained model. It is, in this order:

    - the weights of ``teacher_checkpoint``, when given;
    - with the default ``teacher="auto"`` and a module that starts from trained weights
      (``ImageClassifier(init_from_checkpoint=...)`` or ``weights=...``, or a module with
      ``starts_from_trained_weights = True``): a frozen copy of the module just before the first pruning event of
      the ``UnstructuredPruning``/``ChannelPruning`` callbacks in the Trainer (with their default
      ``start_epoch=None`` that is epoch 0: the trained weights themselves);
    - with ``teacher="first_event"``: that copy whatever the module starts from (the behaviour before
      ``teacher`` existed). From scratch it is the model after one epoch of training, which held the
      pruned student back on held-out data (docs/quality.md): opt in knowingly.

    From scratch with ``teacher="auto"`` and no ``teacher_checkpoint`` there is no trained teacher: a
    rank-zero warning at ``setup`` names the three ways to give one, and the callback contributes nothing
    (``distillation_loss`` is 0, no copy of the model is made).

    The copy is taken at the end of the epoch before the first event; at the start of training when the
    first event is epoch 0 or there is no pruning callback. The teacher's weights are this callback's state in
    checkpoints (plain tensors, loadable with ``torch.load(weights_only=True)``), so ``trainer.fit(ckpt_path=...)``
    brings it back as it was; for a channel-pruned run the teacher keeps the unpruned shapes.

    The training loss gains ``weight * T**2 * KL(softmax(teacher(x) / T) || softmax(student(x) / T))``. The
    teacher is not a submodule of the model: no optimizer, DDP wrapper or pruning callback sees it, so there
    are no unused-parameter issues under DDP. ``ImageClassifier`` adds the term by itself; in your own
    LightningModule add one line to ``training_step``::

        from lightning_prune import distillation_loss

        logits = self(x)
        loss = F.cross_entropy(logits, y) + distillation_loss(self, x, logits)

    ``distillation_loss`` is 0 when no ``Distillation`` callback is in the Trainer, before the teacher is
    taken, or without a teacher. The teacher is called like the module (``teacher(x)``, i.e. your ``forward``),
    in eval mode and without gradients. The term is logged as ``distillation/loss`` (epoch mean).

    Args:
        weight: factor of the distillation term (added to your loss).
        temperature: softmax temperature ``T``.
        teacher_checkpoint: path of a Lightning checkpoint (or a ``state_dict`` file) of the same
            LightningModule class whose weights make the teacher, instead of the copy before the first event.
            The module is reshaped to its shapes first (a channel-pruned teacher works).
        teacher: ``"auto"``: a trained teacher only (``teacher_checkpoint``, or the module's own trained
            starting point); from scratch without one, a warning and no distillation. ``"first_event"``: the copy
            before the first pruning event even from scratch. Not with ``teacher_checkpoint``.
        verbose: print (rank zero) when the teacher is taken.

    Example::

        >>> cb = Distillation(weight=1.0, temperature=4.0)
        >>> cb.teacher is None
        True
    """

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 4.0,
        teacher_checkpoint: str | None = None,
        teacher: TeacherSource = "auto",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.weight = _check_positive("weight", weight)
        self.temperature = _check_positive("temperature", temperature)
        if teacher_checkpoint is not None and not isinstance(teacher_checkpoint, (str, os.PathLike)):
            raise TypeError(
                f"`teacher_checkpoint` must be a path (str) or None; got {teacher_checkpoint!r} "
                f"({type(teacher_checkpoint).__name__})"
            )
        self.teacher_checkpoint = os.fspath(teacher_checkpoint) if teacher_checkpoint is not None else None
        self.teacher_source = check_choice("teacher", teacher, TEACHERS)
        if self.teacher_checkpoint is not None and self.teacher_source != "auto":
            raise ValueError(
                f"`teacher`={teacher!r} takes the teacher from the model being trained, `teacher_checkpoint`="
                f"{self.teacher_checkpoint!r} from a file: give one of them"
            )
        self.verbose = check_bool("verbose", verbose)
        self._active = True  # False: from scratch with no trained teacher (teacher="auto"): no teacher, no term
        self._warned = False
        self._teacher: torch.nn.Module | None = None
        self._teacher_state: dict[str, Tensor] | None = None  # restored from a checkpoint, built at train start
        self._taken_at: int | None = None
        self._pl_module: pl.LightningModule | None = None

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The frozen teacher (a copy of the LightningModule), or None before it is taken."""
        return self._teacher

    @property
    def state_key(self) -> str:
        return self._generate_state_key(weight=self.weight, temperature=self.temperature)

    # ------------------------------------------------------------------------------------------ the loss
    #: marks this callback's :meth:`loss` as a term of :func:`lightning_prune.core.distill.distillation_loss`
    adds_training_loss = True

    def loss(self, pl_module: pl.LightningModule, x: Any, student_logits: Tensor) -> Tensor:
        """``weight * T**2 * KL(teacher || student)`` on the batch ``x`` (0 before the teacher exists)."""
        if self._teacher is None:
            return student_logits.new_zeros(())
        with torch.no_grad():
            teacher_logits = self._teacher(x)
        value = self.weight * kd_loss(student_logits, teacher_logits, self.temperature)
        trainer = compat.attached_trainer(pl_module)
        if trainer is not None and trainer.training:
            pl_module.log("distillation/loss", value.detach(), on_step=False, on_epoch=True)
        return value.to(student_logits.dtype) if student_logits.is_floating_point() else value

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_unsupported(self, trainer, pl_module)  # docs/support.md
        if check_strategy(trainer, "Distillation"):  # FSDP1 is refused in there
            raise ValueError(
                "Distillation does not support ModelParallelStrategy (FSDP2): its teacher is a full, unsharded copy "
                "of the module on every rank. Distil under DDP or on one device (see docs/distributed.md)"
            )
        if self._pl_module is pl_module and self._teacher is not None:
            return  # a second fit of the same module (it continues the schedule): the teacher stays
        self._pl_module = pl_module
        self._teacher, self._teacher_state, self._taken_at = None, None, None  # a fresh run (restored later)
        # decided here, before a checkpoint is restored (a resumed module may then call itself trained)
        self._active = self._has_trained_teacher(pl_module)
        if not self._active and not self._warned:
            self._warned = True
            rank_zero_warn(NO_TEACHER_WARNING)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_unsupported(self, trainer, pl_module)  # again: a module may compile itself in its own `setup`
        if not self._active:
            return
        if self._teacher_state is not None:  # resumed: rebuild the teacher the checkpoint holds
            self._teacher = self._build(pl_module, self._teacher_state)
            self._teacher_state = None
            return
        if self._teacher is not None:  # kept from an earlier fit of this module
            return
        if self.teacher_checkpoint is not None:
            self._teacher = self._build(pl_module, _load_state(self.teacher_checkpoint))
            self._taken_at = -1
            self._announce(trainer, f"loaded from {self.teacher_checkpoint}")
            return
        first = _first_event(trainer)
        if first is None or trainer.current_epoch >= first:
            pruned = any(
                cb.last_event_epoch >= 0 for cb in compat.trainer_callbacks(trainer) if isinstance(cb, ScheduledPruning)
            )
            if pruned:
                rank_zero_warn(
                    "Distillation: the checkpoint holds no teacher and the model is pruned already; the teacher is "
                    "a copy of the pruned model (pass `teacher_checkpoint` to distil from another model)"
                )
            self._take(pl_module, trainer.current_epoch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first = _first_event(trainer)
        if self._active and self._teacher is None and first is not None and trainer.current_epoch == first - 1:
            self._take(pl_module, trainer.current_epoch + 1)

    @override
    def state_dict(self) -> dict[str, Any]:
        teacher: dict[str, Tensor] | None
        if self._teacher is not None:
            teacher = {k: v.detach().cpu().clone() for k, v in self._teacher.state_dict().items()}
        else:
            teacher = self._teacher_state
        return {"version": _STATE_VERSION, "teacher": teacher, "taken_at_epoch": self._taken_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        teacher = state_dict.get("teacher")
        self._teacher_state = dict(teacher) if teacher is not None else None
        self._taken_at = state_dict.get("taken_at_epoch")

    # ------------------------------------------------------------------------------------------ internals
    def _has_trained_teacher(self, pl_module: pl.LightningModule) -> bool:
        """Whether this run has a trained teacher to distil from (see the class docstring)."""
        return (
            self.teacher_checkpoint is not None
            or self.teacher_source == "first_event"
            or starts_from_trained(pl_module)
        )

    def _take(self, pl_module: pl.LightningModule, epoch: int) -> None:
        self._teacher = frozen_copy(pl_module)
        self._taken_at = int(epoch)
        self._announce(
            compat.attached_trainer(pl_module), f"a frozen copy of the model before the pruning event of epoch {epoch}"
        )

    def _build(self, pl_module: pl.LightningModule, state: dict[str, Tensor]) -> torch.nn.Module:
        teacher = frozen_copy(pl_module)
        reshape_decoder_to_state_dict(teacher, state)  # a width-pruned LLM: its config's widths too
        reshape_experts_to_state_dict(teacher, state)  # an expert-pruned MoE decoder: its expert count too
        # a channel-pruned student: the teacher gets its own (wider) shapes back
        reshape_to_state_dict(teacher, state, max_shapes={k: tuple(v.shape) for k, v in state.items()})
        teacher.load_state_dict(state, strict=True)
        return teacher

    def _announce(self, trainer: pl.Trainer | None, what: str) -> None:
        if self.verbose:
            say(
                trainer,
                f"Distillation: teacher = {what}; loss += {self.weight} * T^2 * KL(teacher || "
                f"student), T={self.temperature}",
            )


def _first_event(trainer: pl.Trainer) -> int | None:
    """The earliest scheduled event of the pruning callbacks in the Trainer (None without any)."""
    epochs = [
        min(cb.schedule_epochs)
        for cb in compat.trainer_callbacks(trainer)
        if isinstance(cb, ScheduledPruning) and cb.schedule_epochs
    ]
    return min(epochs) if epochs else None


def _load_state(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`teacher_checkpoint`: no file at {path!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"`teacher_checkpoint`: {path!r} holds no state_dict")
    return state


__all__ = ["NO_TEACHER_WARNING", "TEACHERS", "Distillation", "TeacherSource"]
