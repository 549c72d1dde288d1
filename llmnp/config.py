"""GPT-2 model configuration, with llm.c's field names and size presets.

This file holds only numbers. How the numbers become buffers is params.py.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class GPT2Config:
    max_seq_len: int = 1024        # maxT, positions the wpe table holds
    vocab_size: int = 50257        # V, real tokens
    padded_vocab_size: int = 50304  # Vp, V rounded up to a multiple of 128
    num_layers: int = 12           # L
    num_heads: int = 12            # NH
    channels: int = 768            # C, hs = C / NH

    def __post_init__(self):
        if self.channels % self.num_heads != 0:
            raise ValueError(f"channels ({self.channels}) must be a multiple of num_heads ({self.num_heads})")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded_vocab_size ({self.padded_vocab_size}) < vocab_size ({self.vocab_size})")

    @staticmethod
    def preset(name, max_seq_len=1024, vocab_size=50257):
        """llm.c's descriptors: "d12" (124M), "d24" (350M), "d36" (774M), "d48" (1558M),
        or any other "dN": depth N with C = 64N and NH = N (an llmnp convention for small experiments)."""
        if name.startswith("gpt2:"):
            name = name[len("gpt2:"):]
        table = {"d12": (12, 12, 768), "d24": (24, 16, 1024), "d36": (36, 20, 1280), "d48": (48, 25, 1600)}
        if name in table:
            L, NH, C = table[name]
        elif name[:1] == "d" and name[1:].isdigit() and int(name[1:]) > 0:
            L = int(name[1:])
            C, NH = 64 * L, L
        else:
            raise ValueError(f"unknown model descriptor {name!r}: use d12, d24, d36, d48 (or dN)")
        return GPT2Config(max_seq_len, vocab_size, pad_vocab(vocab_size), L, NH, C)

    @staticmethod
    def tiny(vocab_size=64, max_seq_len=16, num_layers=2, num_heads=2, channels=8, pad_to=16):
        """A toy model for tests and notebooks: a handful of parameters, same code paths."""
        return GPT2Config(max_seq_len, vocab_size, pad_vocab(vocab_size, pad_to), num_layers, num_heads, channels)


def pad_vocab(V, multiple=128):
    """Vp: V rounded up to a multiple of 128 (50257 -> 50304), as llm.c pads."""
    return (V + multiple - 1) // multiple * multiple
