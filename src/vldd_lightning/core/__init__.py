"""The distillation core: losses, retrieval metrics, functional students, unrolling, coresets.

Nothing in this package imports Lightning or Hydra, so it can be reused and tested alone.
"""
