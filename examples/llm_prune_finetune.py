"""Prune a small Llama while fine-tuning it, with distillation from the unpruned model, and save it for Hugging Face.

1. A small ``LlamaForCausalLM`` (random init, built from a config: nothing is downloaded) trains on byte tokens
   of a text that ships with Python (the Zen of Python, ``import this``) in a user's own ``LightningModule``
   with dict batches (``input_ids``, ``attention_mask``, ``labels``).
2. ``DecoderPruning(mlp_ratio=0.5, head_ratio=0.5)`` removes half the MLP channels and half the KV groups over
   two events, while ``Distillation(teacher="first_event")`` adds a KL term to the logits of the unpruned model as
   it stands before the first event (trained 10 epochs by then; the explicit opt-in, as it starts from scratch).
3. ``lightning_prune.save_pretrained`` writes the pruned model; ``AutoModelForCausalLM.from_pretrained`` loads
   it with the same logits, and ``generate()`` (KV cache) continues a prompt.

    python examples/llm_prune_finetune.py --out runs/llm            # a minute or two on a CPU
    python examples/llm_prune_finetune.py --out runs/llm --quick    # tiny model and budget (the tests)
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import io
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lightning_prune import (
    DecoderPrunedCheckpointMixin,
    DecoderPruning,
    Distillation,
    count_params,
    distillation_loss,
    save_pretrained,
)


def zen_of_python() -> str:
    """The Zen of Python, the text ``import this`` prints (kept in the standard library rot13-encoded)."""
    with contextlib.redirect_stdout(io.StringIO()):
        module = importlib.import_module("this")
    return codecs.decode(module.s, "rot13")


TEXT = zen_of_python()


class ByteText(Dataset):
    """Windows of ``length + 1`` bytes of ``TEXT`` (vocabulary: the 256 byte values)."""

    def __init__(self, length: int = 64) -> None:
        self.ids = torch.tensor(list(TEXT.encode()), dtype=torch.long)
        self.length = length

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.length

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i * self.length : (i + 1) * self.length]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class ByteLM(DecoderPrunedCheckpointMixin, pl.LightningModule):
    def __init__(self, hidden: int = 128, layers: int = 4, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                             max_position_embeddings=128, tie_word_embeddings=True)  # fmt: skip
        self.model = LlamaForCausalLM(config)

    def forward(self, batch):  # the teacher of Distillation is called like this
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def training_step(self, batch, batch_idx):
        logits = self(batch)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 256), batch["labels"][:, 1:].reshape(-1))
        self.log("train_loss", loss, prog_bar=True)
        return loss + distillation_loss(self, batch, logits)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="llm_prune_finetune", help="output directory")
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 batches an epoch")
    args = parser.parse_args(argv)
    out = Path(args.out)
    pl.seed_everything(0, verbose=False)
    module = ByteLM(hidden=64, layers=2) if args.quick else ByteLM()
    dense_params = count_params(module.model)
    loader = DataLoader(ByteText(32 if args.quick else 64), batch_size=4, shuffle=True)
    events = {"start_epoch": 1, "end_epoch": 2} if args.quick else {"start_epoch": 10, "end_epoch": 14}
    pruning = DecoderPruning(mlp_ratio=0.5, head_ratio=0.5, **events)
    trainer = pl.Trainer(max_epochs=3 if args.quick else 30, accelerator="cpu", logger=False,
                         callbacks=[pruning, Distillation(weight=1.0, temperature=2.0, teacher="first_event")],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=out, limit_train_batches=2 if args.quick else None)  # fmt: skip
    trainer.fit(module, loader)
    pruned_params = count_params(module.model)
    print(f"params {dense_params:,} -> {pruned_params:,}; widths {pruning.widths[0]}")

    save_pretrained(module, out / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(out / "pruned", dtype=torch.float32).eval()
    module.model.eval()
    ids = torch.tensor([list(b"Beautiful is better")])
    with torch.no_grad():
        diff = (loaded(input_ids=ids).logits - module.model(input_ids=ids).logits).abs().max().item()
    print(f"from_pretrained logits max abs diff: {diff:.3g}")
    generated = loaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    text = bytes(generated[0].tolist()).decode(errors="replace")
    print(f"generate(): {text!r}")
    return {"dense_params": dense_params, "pruned_params": pruned_params, "logits_diff": diff, "text": text,
            "widths": pruning.widths[0]}  # fmt: skip


if __name__ == "__main__":
    main()
