"""The support table (lightning_prune/callbacks/support.py): a row for every constructor parameter of every
callback and a cell for every context; the contexts a fit is in; the refusals at setup (before any step, the model
untouched); the generated docs."""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import pytest
import torch
from helpers import UserClassifier, make_trainer, run_ddp_script
from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging, WeightAveraging
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from torch.utils.data import DataLoader, TensorDataset

import lightning_prune.callbacks as callbacks
from lightning_prune import (
    ChannelPruning,
    ChannelRegularization,
    DecoderPruning,
    Distillation,
    ExpertPruning,
    PruningMetrics,
    QuantizationAware,
    UnstructuredPruning,
)
from lightning_prune.callbacks import support
from lightning_prune.callbacks.support import CALLBACKS, CONTEXTS, TABLE, contexts, refuse_unsupported, same
from lightning_prune.models import LeNet

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {
    c.__name__: c
    for c in (UnstructuredPruning, ChannelPruning, DecoderPruning, Distillation, ChannelRegularization, PruningMetrics)
    + (ExpertPruning, QuantizationAware)
}


def _fake(strategy=None, callbacks_=(), max_epochs=4):
    strategy = strategy or SingleDeviceStrategy(torch.device("cpu"))
    return types.SimpleNamespace(strategy=strategy, callbacks=list(callbacks_), max_epochs=max_epochs)


# ------------------------------------------------------------------------------------------ the table itself
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_constructor_parameter_has_a_row_with_every_context(name):
    """A parameter added to a constructor without a row in the table fails here."""
    params = [p for p in inspect.signature(CLASSES[name]).parameters if p not in ("self", "args", "kwargs")]
    assert list(TABLE[name]) == params, "the support table's rows must be the constructor's parameters, in order"
    for option, row in TABLE[name].items():
        assert set(row) == set(CONTEXTS), option
        for context, cell in row.items():
            runs = CALLBACKS[name][context].every
            assert (cell is support.NA) == (not runs), (option, context)  # '-' exactly where the callback is refused
            assert cell.every or cell.why, (option, context)  # every refusal says why and what to do
    assert set(CALLBACKS[name]) == set(CONTEXTS)


def test_every_public_callback_is_in_the_table():
    public = {n for n in callbacks.__all__ if not n.endswith("Mixin")}
    assert public == set(TABLE) == set(CALLBACKS) == set(CLASSES)


def test_defaults_compare_by_type_and_value():
    assert not same(0, False) and not same(False, 0) and not same(None, 0) and not same(0, None)
    assert not same(lambda w: w, "l1") and not same("l1", None)
    assert same(1, 1.0) and same(None, None) and same("l1", "l1") and same(False, False)
    assert not same(True, 1) and not same({}, None) and not same([], None)


def test_docs_are_generated_from_the_table():
    """``python -m lightning_prune.callbacks.support`` regenerates them."""
    assert (ROOT / support.DOCS).read_text() == support.support_markdown()
    text = (ROOT / "docs" / "distributed.md").read_text()
    assert support.distributed_markdown() in text


def test_write_docs_rewrites_only_what_changed(tmp_path):
    (tmp_path / "docs").mkdir()
    original = (ROOT / "docs" / "distributed.md").read_text()
    stale = original.replace("refused at `setup`: `norm`", "refused: `norm`", 1)
    (tmp_path / "docs" / "distributed.md").write_text(stale)
    assert {p.name for p in support.write_docs(tmp_path)} == {"support.md", "distributed.md"}
    assert (tmp_path / "docs" / "distributed.md").read_text() == original
    assert support.write_docs(tmp_path) == []


# ------------------------------------------------------------------------------------------ context detection
def test_strategy_context():
    assert support.strategy_context(_fake()) == "single"
    assert support.strategy_context(_fake(DDPStrategy())) == "ddp"
    assert support.strategy_context(_fake(DDPStrategy(start_method="spawn"))) == "ddp_spawn"
    assert support.strategy_context(_fake(DDPStrategy(start_method="fork"))) == "ddp_spawn"
    assert support.strategy_context(_fake(ModelParallelStrategy())) == "fsdp2"
    assert support.strategy_context(_fake(FSDPStrategy())) is None  # refused by the callbacks' own checks


def test_compiled_context():
    module = UserClassifier()
    cb = PruningMetrics()
    assert contexts(cb, _fake(), module) == ["single", "epoch_events"]
    module.backbone = torch.compile(module.backbone)
    assert contexts(cb, _fake(), module) == ["single", "compiled", "epoch_events"]


def test_weight_averaging_context():
    module = UserClassifier()
    cb = PruningMetrics()
    for averaging in (EMAWeightAveraging(), WeightAveraging()):
        assert contexts(cb, _fake(callbacks_=[cb, averaging]), module) == ["single", "averaging", "epoch_events"]
    # the older StochasticWeightAveraging is no WeightAveraging (ChannelPruning refuses it by its own check)
    assert contexts(cb, _fake(callbacks_=[cb, StochasticWeightAveraging(1e-3)]), module) == ["single", "epoch_events"]


def test_step_and_epoch_events_context():
    module = UserClassifier()
    steps = UnstructuredPruning(0.5, every_n_steps=2)
    epochs = UnstructuredPruning(0.5)
    metrics = PruningMetrics()
    assert contexts(steps, _fake(callbacks_=[steps]), module)[-1] == "step_events"
    assert contexts(epochs, _fake(callbacks_=[epochs, steps]), module)[-1] == "epoch_events"  # its own events
    assert contexts(metrics, _fake(callbacks_=[metrics, steps]), module)[-1] == "step_events"  # the Trainer's
    assert contexts(metrics, _fake(callbacks_=[metrics, epochs]), module)[-1] == "epoch_events"


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("cb", "strategy", "needle"),
    [
        (UnstructuredPruning(0.5, rewind_epoch=0), ModelParallelStrategy(), "`rewind_epoch`=0"),
        (UnstructuredPruning(0.5, norm="lamp"), ModelParallelStrategy(), "`norm`='lamp'"),
        (UnstructuredPruning(0.5, min_kept_per_layer=0), ModelParallelStrategy(), "`min_kept_per_layer`=0"),
        (UnstructuredPruning(0.5, make_pruning_permanent=False), DDPStrategy(start_method="spawn"), "ddp_spawn"),
    ],
)
def test_refusals_name_option_value_and_context(cb, strategy, needle):
    with pytest.raises(ValueError, match="is not supported under") as err:
        refuse_unsupported(cb, _fake(strategy, [cb]), UserClassifier())
    assert needle in str(err.value) and "docs/support.md" in str(err.value)


def test_default_values_and_honoured_values_pass():
    fsdp2 = ModelParallelStrategy()
    for cb in (
        UnstructuredPruning(0.5, rewind_epoch=None, norm="l2", min_kept_per_layer=1, make_pruning_permanent=True),
        UnstructuredPruning(0.5, norm="random", scope="layerwise", max_layer_sparsity=None, pattern=None),
        PruningMetrics(per_layer=False, every_n_epochs=2, input_shape=[1, 16], summary=False),
    ):
        refuse_unsupported(cb, _fake(fsdp2, [cb]), UserClassifier())
    cb = UnstructuredPruning(0.5, rewind_epoch=0, resample_parameters=False, layer_amounts={"backbone.fc1": 0.2})
    refuse_unsupported(cb, _fake(DDPStrategy(), [cb]), UserClassifier())  # DDP honours every option


def test_a_callable_norm_is_not_a_string():
    cb = UnstructuredPruning(0.5, norm=lambda w: w.abs())
    with pytest.raises(ValueError, match=r"`norm`=<callable .*lambda.*> is not supported under ModelParallel"):
        refuse_unsupported(cb, _fake(ModelParallelStrategy(), [cb]), UserClassifier())
    module = UserClassifier()
    module.backbone = torch.compile(module.backbone)
    refuse_unsupported(cb, _fake(callbacks_=[cb]), module)  # honoured on a compiled module
    wanda = UnstructuredPruning(0.5, norm="wanda", start_epoch=1)
    with pytest.raises(ValueError, match="`norm`='wanda' is not supported under a torch.compile'd module"):
        refuse_unsupported(wanda, _fake(callbacks_=[wanda]), module)


@pytest.mark.parametrize(
    "name, context", [("DecoderPruning", "ddp_spawn"), ("ChannelPruning", "fsdp2"), ("DecoderPruning", "fsdp2")]
)
def test_strategies_the_table_refuses_are_refused_by_the_callbacks_own_check(name, context):
    """Where CALLBACKS says a callback does not run, its setup refuses it (compiled modules: test_channel.py and
    test_llm.py; DecoderPruning with weight averaging: test_llm.py)."""
    assert not CALLBACKS[name][context].every and CALLBACKS[name]["ddp"].every
    cb = ChannelPruning(0.5, start_epoch=0) if name == "ChannelPruning" else DecoderPruning(start_epoch=0)
    strategy = DDPStrategy(start_method="spawn") if context == "ddp_spawn" else ModelParallelStrategy()
    detail = "start_method='spawn' \\(ddp_spawn\\)" if context == "ddp_spawn" else "ModelParallelStrategy"
    with pytest.raises(ValueError, match=f"{name} supports single-device, DDP.* training only.*{detail}.*'ddp'"):
        cb.setup(_fake(strategy, [cb]), UserClassifier(), "fit")


def _loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


class _Counting(UserClassifier):
    steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("context", ["averaging", "compiled"])
def test_a_refused_option_leaves_the_model_untouched_and_runs_no_step(tmp_path, context):
    model = _Counting()
    extra = []
    if context == "averaging":
        cb = UnstructuredPruning(0.5, start_epoch=0, rewind_epoch=0, verbose=False)
        extra = [EMAWeightAveraging()]
        needle = "`rewind_epoch`=0 is not supported under weight averaging"
    else:
        model.backbone = torch.compile(LeNet(), backend="eager")
        cb = UnstructuredPruning(0.5, start_epoch=1, norm="wanda", verbose=False)
        needle = "`norm`='wanda' is not supported under a torch.compile'd module"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = {n: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match=needle):
        make_trainer(tmp_path, 2, [cb, *extra]).fit(model, _loader())
    assert model.steps == 0
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert {n: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for n, m in model.named_modules()} == hooks


@pytest.mark.rehearsal  # a 2-process launch of 20 s or more (the default run's 4-minute budget)
def test_fsdp2_refuses_the_options_it_does_not_honour(tmp_path):
    """Six fits under FSDP2 (2 processes, one launch): each option refused at setup, 0 steps, model not built; a
    seventh: the default min_kept_per_layer=1 where it binds stops the run at the event, the model unpruned."""
    r0, r1 = run_ddp_script("fsdp2_support.py", tmp_path, timeout=400)
    needles = {
        "layer_amounts": "`layer_amounts`={'net.0': 0.2} is not supported under ModelParallelStrategy (FSDP2)",
        "structured_dim": "`structured_dim`=0 is not supported under ModelParallelStrategy (FSDP2)",
        "min_kept_per_layer": "`min_kept_per_layer`=5 is not supported under ModelParallelStrategy (FSDP2)",
        "rewind_epoch": "`rewind_epoch`=0 is not supported under ModelParallelStrategy (FSDP2)",
        "resample_parameters": "`resample_parameters`=True is not supported under ModelParallelStrategy (FSDP2)",
        "norm": "`norm`=<callable l1_squared> is not supported under ModelParallelStrategy (FSDP2)",
    }
    for r in (r0, r1):
        assert set(r) == {*needles, "collapse"}
        collapse = r["collapse"]  # the default floor, where it would bind: stopped at the event, nothing changed
        assert collapse["message"].startswith("RuntimeError") and "min_kept_per_layer=1" in collapse["message"]
        assert "['net.4.weight']" in collapse["message"] and collapse["steps"] == 0 and collapse["masks"] is None
        assert collapse["zeros"][0] == collapse["zeros"][1]
        for name, needle in needles.items():
            got = r[name]
            assert got["message"].startswith("ValueError") and needle in got["message"], (name, got)
            assert got["steps"] == 0 and not got["built"], (name, got)


@pytest.mark.parametrize(
    ("needle", "context"),
    [
        ("`torch.compile`d model", "compiled"),
        ("FSDP2", "fsdp2"),
        ("`WeightAveraging`", "averaging"),
        ('`strategy="ddp_spawn"`', "ddp_spawn"),
    ],
)
def test_llm_docs_refusals_agree_with_the_table(needle, context):
    """docs/llm.md's "What is refused" rows for DecoderPruning say what the table says."""
    text = (ROOT / "docs" / "llm.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| ") and needle in line.split("|")[1]]
    assert ("| refused" in row) == (not CALLBACKS["DecoderPruning"][context].every), row


@pytest.mark.parametrize(
    ("page", "start", "end"),
    [
        ("unstructured.md", "Under FSDP2 (`ModelParallelStrategy` with `fully_shard`)", "See [distributed.md]"),
        (
            "distributed.md",
            "(`tensor_parallel_size > 1`, weights sharded along other dims): refused.",
            "`ChannelPruning`",
        ),
    ],
)
def test_fsdp2_prose_names_only_options_the_table_refuses(page, start, end):
    """The paragraphs of docs/ that list UnstructuredPruning's FSDP2 refusals name options the table refuses there."""
    import re

    text = (ROOT / "docs" / page).read_text()
    paragraph = text[text.index(start) :]
    paragraph = paragraph[: paragraph.index(end)]
    named = {m for m in re.findall(r"`(\w+)[`=]", paragraph) if m in TABLE["UnstructuredPruning"]}
    assert named >= {"norm", "rewind_epoch", "layer_amounts", "structured_dim", "resample_parameters"}, named
    assert all(not TABLE["UnstructuredPruning"][o]["fsdp2"].every for o in named), named
