"""Local models without a hub: the tiny Llama tests and the demo build, and GGUF import."""
