"""Getting things from outside: model weights (`fetch-weights`) and datasets (`fetch-data`).

Import-light on purpose: nothing here imports torch, transformers, cv2 or einops at module level,
because the CLI (and shell completion) may import it.
"""
