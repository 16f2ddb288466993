"""Vision-language dataset distillation by bi-trajectory matching, on PyTorch Lightning."""

__version__ = "0.1.0"
