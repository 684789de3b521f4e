"""Step-level schedules: ``StepSchedule`` (core, no Trainer) and ``UnstructuredPruning(every_n_steps=N)``."""

import logging

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from helpers import UserClassifier, make_trainer
from lightning_prune import UnstructuredPruning
from lightning_prune.core.schedules import SCHEDULES, StepSchedule, build_schedule, count_for, steps_per_epoch

LENET_TOTAL = 61_470  # the selected weights of LeNet (conv1, conv2, fc1, fc2, fc3)


# ---------------------------------------------------------------------------------------------- core


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(
    ("start", "end", "per_epoch", "n"), [(1, 5, 23, 4), (0, 3, 10, 1), (2, 2, 7, 3), (0, 4, 6, 5), (1, 3, 3, 100)]
)
def test_step_schedule_window_monotone_exact_final(schedule, start, end, per_epoch, n):
    sched = StepSchedule(0.9, schedule, start, end, per_epoch, n)
    targets = sched.targets()
    steps = list(targets)
    assert steps[0] == start * per_epoch and steps[-1] == end * per_epoch  # the epoch schedule's first/last event
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert all(g == n for g in gaps[:-1]) and all(0 < g <= n for g in gaps[-1:])
    values = list(targets.values())
    assert values[-1] == 0.9  # exact, not approximately
    assert all(0.0 <= a <= b <= 0.9 for a, b in zip(values, values[1:], strict=False))
    if schedule != "constant" and len(values) > 1:
        assert values[0] < values[-1]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_step_schedule_matches_epoch_shape_on_an_even_grid(schedule):
    # 3 epochs of 8 steps, an event every 4: 7 events at t = i/7, as `build_schedule` with 7 events
    got = list(StepSchedule(0.8, schedule, 1, 4, 8, 4).targets().values())
    assert got == list(build_schedule(0.8, schedule, 0, 6).values())


def test_step_schedule_due_catches_up_once():
    sched = StepSchedule(0.5, "linear", 1, 2, 10, 3)
    assert sched.steps() == [10, 13, 16, 19, 20]
    assert [sched.due(s) for s in (0, 9)] == [None, None]
    assert [sched.due(s) for s in (10, 12, 13, 19, 20, 500)] == [10, 10, 13, 19, 20, 20]
    assert sched.due(14, last_done=13) is None and sched.due(16, last_done=13) == 16
    assert sched.due(18, last_done=10) == 16  # a resume (or a skipped step) catches up with the latest event
    assert sched.due(25, last_done=20) is None
    assert StepSchedule(**sched.state()).targets() == sched.targets()


def test_steps_per_epoch_and_bad_arguments():
    assert [steps_per_epoch(5, 2), steps_per_epoch(4, 2), steps_per_epoch(7)] == [3, 2, 7]
    with pytest.raises(ValueError, match="`accumulate_grad_batches` must be >= 1; got 0"):
        steps_per_epoch(5, 0)
    with pytest.raises(ValueError, match="`every_n_steps` must be >= 1; got 0"):
        StepSchedule(0.5, "cubic", 0, 1, 10, 0)
    with pytest.raises(ValueError, match="`end_epoch` must be >= 2; got 1"):
        StepSchedule(0.5, "cubic", 2, 1, 10, 1)
    with pytest.raises(ValueError, match="`schedule` must be one of"):
        StepSchedule(0.5, "exp", 0, 1, 10, 1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_steps": 0}, ValueError, "`every_n_steps` must be >= 1; got 0"),
        ({"every_n_steps": "4"}, TypeError, r"`every_n_steps` must be an int or None; got '4' \(str\)"),
        ({"every_n_steps": True}, TypeError, "`every_n_steps` must be an int or None; got True"),
        ({"every_n_steps": 2.0}, TypeError, "`every_n_steps` must be an int or None; got 2.0"),
        ({"every_n_steps": 4, "amount": {1: 0.5, 3: 0.9}}, ValueError, "does not combine with explicit milestones"),
        ({"every_n_steps": 4, "every_n_epochs": 2}, ValueError, r"`every_n_epochs`=2 \(every_n_steps replaces it\)"),
        ({"every_n_steps": 4, "rewind_epoch": 0, "start_epoch": 1}, ValueError, "`rewind_epoch`=0"),
        ({"every_n_steps": 4, "resample_parameters": True}, ValueError, "`resample_parameters`=True"),
    ],
)
def test_constructor_refuses_bad_every_n_steps(kwargs, error, match):
    with pytest.raises(error, match=match):
        UnstructuredPruning(**{"amount": 0.9, **kwargs})


def test_every_n_steps_default_and_state_key():
    assert UnstructuredPruning(0.9).every_n_steps is None
    assert "every_n_steps" not in UnstructuredPruning(0.9).state_key  # the epoch callbacks' keys are unchanged
    assert "'every_n_steps': 4" in UnstructuredPruning(0.9, every_n_steps=4).state_key
    with pytest.raises(ValueError, match="`step_targets` needs `every_n_steps`"):
        UnstructuredPruning(0.9).step_targets(10, max_epochs=4)
    cb = UnstructuredPruning(0.9, start_epoch=1, end_epoch=2, every_n_steps=2)
    assert cb.step_targets(3) == StepSchedule(0.9, "cubic", 1, 2, 3, 2).targets()


class _Manual(UserClassifier):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


def test_manual_optimization_is_refused_at_setup(tmp_path):
    cb = UnstructuredPruning(0.5, start_epoch=0, end_epoch=1, every_n_steps=2)
    model = _Manual()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="uses manual optimization"):
        make_trainer(tmp_path, 2, [cb]).fit(model, _loader())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------- training


def _loader(n_batches=10, batch_size=8, cls=DataLoader):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * batch_size, 1, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_batches * batch_size,), generator=g)
    return cls(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _zeros(pl_module):
    layers = [m for m in pl_module.backbone.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return sum(int((m.weight == 0).sum()) for m in layers)


class StepProbe(Callback):
    """Listed after UnstructuredPruning: the zeros each batch trains with, by (epoch, global step)."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, trainer.global_step, _zeros(pl_module)))


def test_sparsity_rises_within_epochs_and_reaches_target_at_last_step(tmp_path, caplog):
    pl.seed_everything(0)
    cb = UnstructuredPruning(0.9, start_epoch=1, end_epoch=3, every_n_steps=2)
    probe = StepProbe()
    trainer = make_trainer(tmp_path, 5, [cb, probe], limit_train_batches=9, accumulate_grad_batches=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(UserClassifier(), _loader())
    # 9 batches, 2 per optimizer step: 5 steps per epoch; events every 2 steps from step 5 to step 15
    expected = StepSchedule(0.9, "cubic", 1, 3, 5, 2).targets()
    assert list(expected) == [5, 7, 9, 11, 13, 15]
    assert cb.step_schedule == expected
    assert [h["step"] for h in cb.history] == list(expected)
    assert [h["pruned"] for h in cb.history] == [count_for(t, LENET_TOTAL) for t in expected.values()]
    assert [h["epoch"] for h in cb.history] == [1, 1, 1, 2, 2, 3]  # steps 5..9, 10..14, 15..19
    # what the batches trained with: exact counts from the event's step on, never before it
    for epoch, step, zeros in probe.seen:
        done = [s for s in expected if s <= step]
        assert zeros == (count_for(expected[done[-1]], LENET_TOTAL) if done else 0), (epoch, step)
    within = {e: sorted({z for ep, _, z in probe.seen if ep == e}) for e in (1, 2)}
    assert len(within[1]) == 3 and len(within[2]) == 3  # the sparsity rises inside these epochs
    final = count_for(0.9, LENET_TOTAL)
    first_final = min(s for _, s, z in probe.seen if z == final)
    assert first_final == 15 and all(z == final for _, s, z in probe.seen if s >= 15)
    assert _zeros(trainer.lightning_module) == final
    assert cb.last_event_step == 15 and cb.last_event_epoch == 3
    assert float(trainer.callback_metrics["pruning/sparsity"]) == pytest.approx(final / LENET_TOTAL)
    assert float(trainer.callback_metrics["pruning/target"]) == pytest.approx(0.9)
    # verbose: the schedule once, then one summary line per epoch with events, never one per step
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("UnstructuredPruning")]
    assert sum("events every 2 optimizer steps" in line for line in lines) == 1
    assert [line.split(":")[1] for line in lines if " (steps " in line] == [" epoch 1", " epoch 2", " epoch 3"]
    assert not any("schedule {epoch: target}" in line for line in lines)


class ResumableLoader(DataLoader):
    """A DataLoader that resumes mid-epoch: Lightning saves its ``state_dict`` (the batches served in the epoch) in
    the checkpoint, and the resumed run starts after them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served, self.skip = 0, 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        self.served = skip
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                self.served = i + 1
                yield batch

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state):
        self.skip = state["served"]


class BatchLog(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, float(batch[0].sum())))


def _fit_steps(root, ckpt_path=None):
    pl.seed_everything(0)
    model = UserClassifier()
    cb = UnstructuredPruning(0.9, start_epoch=1, end_epoch=3, every_n_steps=3, verbose=False)
    log = BatchLog()
    ckpt = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = make_trainer(
        root, 4, [cb, log, ckpt], limit_train_batches=7, enable_checkpointing=True, deterministic=True,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, _loader(7, cls=ResumableLoader), ckpt_path=ckpt_path)
    return model, cb, log


def test_resume_mid_epoch_from_a_step_checkpoint_is_bit_exact(tmp_path):
    full, full_cb, full_log = _fit_steps(tmp_path / "full")
    assert [h["step"] for h in full_cb.history] == [7, 10, 13, 16, 19, 21]
    # mid epoch 1 (7 steps per epoch): step 11 between two events; step 13 with an event due at the next batch
    for step, last_event in ((11, 10), (13, 10)):
        ckpt = tmp_path / "full" / f"step={step}.ckpt"
        state = next(v for k, v in torch.load(ckpt, weights_only=True)["callbacks"].items() if "Unstructured" in k)
        assert state["steps"]["last_event_step"] == last_event and state["steps"]["schedule"]["steps_per_epoch"] == 7
        resumed, cb, log = _fit_steps(tmp_path / f"resumed{step}", ckpt_path=str(ckpt))
        assert log.seen == full_log.seen[step:]  # the data resumes where it stopped (the test's own loader)
        assert cb.history == full_cb.history
        a, b = full.state_dict(), resumed.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert _zeros(resumed) == count_for(0.9, LENET_TOTAL)


def test_iterable_loader_without_length_is_refused(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(4):
                yield torch.randn(1, 32, 32, generator=g), torch.tensor(1)

    cb = UnstructuredPruning(0.5, start_epoch=0, end_epoch=1, every_n_steps=2)
    with pytest.raises(ValueError, match="needs a training dataloader with a length"):
        make_trainer(tmp_path, 2, [cb], limit_train_batches=1.0).fit(
            UserClassifier(), DataLoader(Stream(), batch_size=2)
        )


def test_nm_pattern_and_weight_averaging_follow_step_events(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    pl.seed_everything(0)
    cb = UnstructuredPruning(0.5, pattern="2:4", start_epoch=1, end_epoch=2, every_n_steps=2, verbose=False)
    model = UserClassifier()
    make_trainer(tmp_path, 3, [cb, EMAWeightAveraging()], limit_train_batches=4).fit(model, _loader())
    assert [h["step"] for h in cb.history] == [4, 6, 8]
    for name in ("fc1", "fc2", "fc3"):  # the averaged model swapped in at the end: exactly 2 of every 4 kept
        w = getattr(model.backbone, name).weight
        assert torch.equal((w.reshape(w.shape[0], -1, 4) != 0).sum(-1), torch.full((w.shape[0], w.shape[1] // 4), 2))


def check_ddp_step_events(r0: dict, r1: dict) -> None:
    """What the two ranks of tests/scripts/unstructured_ddp.py's step-event fit saved (run by
    test_unstructured.py's DDP test, one launch for both fits): the same events at the same steps, the same masks
    after every step, the same weights."""
    # 3 batches per rank and epoch: 3 optimizer steps per epoch, events at global steps 0, 2 and 3
    assert [h["step"] for h in r0["history"]] == [h["step"] for h in r1["history"]] == [0, 2, 3]
    targets = StepSchedule(0.8, "cubic", 0, 1, 3, 2).targets()
    assert [h["pruned"] for h in r0["history"]] == [count_for(t, LENET_TOTAL) for t in targets.values()]
    assert len(r0["masks"]) == len(r1["masks"]) == 6 + 2  # after every step, and at both epoch ends
    for m0, m1 in zip(r0["masks"], r1["masks"], strict=True):
        assert sorted(m0) == sorted(m1) and all(torch.equal(m0[k], m1[k]) for k in m0)
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
