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
    def preset(name, max_seq_len=None, vocab_size=50257):
        """llm.c's model descriptors. "dN" or "gpt2:dN": GPT-2 of depth N, T=1024 (llm.c's table: d12 124M,
        d24 350M, d36 774M, d48 1558M, and its unofficial d60, d72, d84; any other N: C = 64N, NH = N, an
        llmnp convention for small experiments). "gpt3:cN": GPT-3 of N channels, T=2048, the depth and
        head size of llm.c's table (head sizes 64, 80, 96, 128)."""
        if name.startswith("gpt3:c") and name[6:].isdigit():
            C = int(name[6:])
            if C not in GPT3_SHAPES:
                raise ValueError(f"unknown GPT-3 width {name!r}: use gpt3:c" + ", gpt3:c".join(map(str, GPT3_SHAPES)))
            L, head_size = GPT3_SHAPES[C]
            if C % head_size:
                raise ValueError(f"{name}: {C} channels do not split into heads of {head_size}")
            return GPT2Config(max_seq_len or 2048, vocab_size, pad_vocab(vocab_size), L, C // head_size, C)
        if name.startswith("gpt2:"):
            name = name[len("gpt2:"):]
        if name[:1] == "d" and name[1:].isdigit() and int(name[1:]) > 0:
            L = int(name[1:])
            C, NH = GPT2_SHAPES.get(L, (64 * L, L))
            return GPT2Config(max_seq_len or 1024, vocab_size, pad_vocab(vocab_size), L, NH, C)
        raise ValueError(f"unknown model descriptor {name!r}: use d12, d24, d36, d48 (or dN), or gpt3:cN")

    @staticmethod
    def tiny(vocab_size=64, max_seq_len=16, num_layers=2, num_heads=2, channels=8, pad_to=16):
        """A toy model for tests and notebooks: a handful of parameters, same code paths."""
        return GPT2Config(max_seq_len, vocab_size, pad_vocab(vocab_size, pad_to), num_layers, num_heads, channels)


# llm.c's descriptor tables: GPT-2 depth -> (channels, heads); GPT-3 channels -> (depth, head size)
GPT2_SHAPES = {12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
               60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}
GPT3_SHAPES = {384: (6, 64), 768: (12, 64), 1024: (24, 64), 1536: (24, 96), 2048: (24, 128),
               2560: (32, 80), 4096: (32, 128), 5140: (40, 128), 12288: (96, 128)}


def pad_vocab(V, multiple=128):
    """Vp: V rounded up to a multiple of 128 (50257 -> 50304), as llm.c pads."""
    return (V + multiple - 1) // multiple * multiple
