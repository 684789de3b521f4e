"""Lightning callbacks (thin glue over the pure-PyTorch core)."""

__all__: list[str] = []
