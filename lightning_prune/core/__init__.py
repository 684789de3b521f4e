"""The pure-PyTorch core of lightning_prune: schedules, selection, masks, structure, optimizer
remapping, measurement, compression, N:M patterns (``nm``) and export to ONNX / TorchScript / torch.export.

Nothing under ``lightning_prune.core`` imports Lightning, torchvision or torchmetrics; torch-pruning is
imported only where channel pruning needs it. The callbacks, models, data and CLI sit on top.
"""
