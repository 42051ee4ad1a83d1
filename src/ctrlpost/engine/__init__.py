"""The distributed training engine: build, parallelise, train, checkpoint, launch.

``torch.distributed`` appears only in this package; ``layout`` is pure arithmetic (no torch).
"""
