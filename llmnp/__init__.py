"""llmnp: GPT-2 training from scratch, every layer's forward and backward written by hand,
in NumPy for the CPU and in CUDA C for the GPU, on llm.c's file formats."""
from llmnp.config import GPT2Config
from llmnp.model import GPT2

__all__ = ["GPT2", "GPT2Config"]
