"""Fused kernels and memory settings hilt trains with where it can: LoRA, RMSNorm, rotary embeddings,
segment attention over packed rows, the tiled LM head and loss on CPU, and kept host memory."""
