"""`ctrlpost embed`: T5-XXL caption embeddings (the command, the encoder, its GPU kernels)."""
