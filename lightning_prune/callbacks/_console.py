"""Where the callbacks' console lines go: through the Trainer's progress bar when one is on (Lightning's progress
bars print above themselves; a line sent through ``logging`` instead is drawn over by ``RichProgressBar``), else
through Lightning's rank-zero logger. Either way only the global rank zero prints."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info


def say(trainer: Any, message: str) -> None:
    """Print ``message`` once (rank zero), above the progress bar when ``trainer`` shows one."""
    bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    if bar is None or not getattr(bar, "is_enabled", False):
        rank_zero_info(message)
        return
    if not trainer.is_global_zero:
        return
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    if isinstance(bar, TQDMProgressBar):  # tqdm's `write` keeps its bars below, active or not yet created
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        Tqdm.write(message)
    elif isinstance(bar, RichProgressBar):  # the console the bar draws on (Rich's global one): above the bar
        from rich import get_console

        get_console().print(message, markup=False, highlight=False, soft_wrap=True)
    else:  # users' own bars
        bar.print(message)


__all__ = ["say"]
