"""Kernel-backed losses: one module per loss, all on the shared tiled softmax engine."""
