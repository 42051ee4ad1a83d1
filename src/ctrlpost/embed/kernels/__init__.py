"""Triton kernels of the T5 encoder on the GPU (packed attention, fused RMS norm + cast)."""
