"""The per-loss epilogues, one module per public loss (``simcse`` holds both SimCSE losses).

Each chooses its candidate rows, the keys that mark positives, the masks and the scale,
calls one of the two engines (``engines/``) and assembles the loss from the engine's O(N)
outputs: no loss has a kernel of its own.
"""
