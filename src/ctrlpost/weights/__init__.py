"""`ctrlpost fetch-weights`: the Hugging Face checkpoints a recipe needs (catalog, plan, download,
disk) and the tiny flavor's weights made locally.

Import-light on purpose: nothing here imports torch, transformers, cv2 or einops at module level,
because the CLI (and shell completion) may import it.
"""
