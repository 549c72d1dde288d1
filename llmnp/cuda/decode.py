"""Decoding launchers (decode.cu; llmnp/generate.py holds the NumPy references, same names and
arguments, and states the rules).

Shapes: B rows, C channels, NH heads, hs = C/NH, Tc cache positions, Vp padded vocab, V vocab;
x (B,1,C), kv (2,B,NH,Tc,hs), qkv (B,1,3C), logits (B,1,Vp); tok, pos, done, out, prompt_len int32 (B,),
prompt int32 (B,Tc), key uint64 (B,).
"""
import numpy as np

from llmnp.cuda.runtime import blocks, check, kernel


def encoder_step(x, tok, pos, wte, wpe):
    """x (B,1,C) = wte[tok] + wpe[pos], row by row."""
    B, C = x.shape[0], x.shape[-1]
    check(x.dtype, x=x, wte=wte, wpe=wpe)
    check(np.int32, tok=tok, pos=pos)
    block_size = 256
    k = kernel("decode", "encoder_step_kernel1", x.dtype)
    k((blocks(B * C, block_size),), (block_size,), (x, tok, pos, wte, wpe, np.int32(B), np.int32(C)))


def attention_step(out, kv, qkv, pos):
    """out (B,1,C) <- each row's query over its cache positions 0..pos; writes the row's key and value
    into kv (2,B,NH,Tc,hs) at pos first."""
    _, B, NH, Tc, hs = kv.shape
    check(out.dtype, out=out, kv=kv, qkv=qkv)
    check(np.int32, pos=pos)
    if hs > 128 or out.shape[-1] != NH * hs or qkv.shape[-1] != 3 * NH * hs:
        raise ValueError(f"attention_step shapes disagree (or hs > 128): out {out.shape}, kv {kv.shape}, qkv {qkv.shape}")
    block_size = 128
    smem = 4 * Tc                                          # the scores of one (row, head)
    k = kernel("decode", "attention_step_kernel1", out.dtype, HS=hs)
    k.max_dynamic_shared_size_bytes = smem
    k((B * NH,), (block_size,), (out, kv, qkv, pos, np.int32(B), np.int32(NH), np.int32(Tc)), shared_mem=smem)


def sample_step(out, tok, pos, done, logits, prompt, prompt_len, key, V, temperature, top_k, top_p, eot):
    """Per row: out = the token sampled from logits (B,1,Vp) (-1 while in the prompt or done), and the
    next step's tok and pos (or done)."""
    B, Vp = logits.shape[0], logits.shape[-1]
    Tc = prompt.shape[1]
    check(np.int32, out=out, tok=tok, pos=pos, done=done, prompt=prompt, prompt_len=prompt_len)
    check(np.uint64, key=key)
    check(logits.dtype, logits=logits)
    block_size = 1024                                      # decode.cu's scan holds 1024 partial sums
    k = kernel("decode", "sample_step_kernel1", logits.dtype)
    k((B,), (block_size,), (out, tok, pos, done, logits, prompt, prompt_len, key, np.int32(Vp), np.int32(V),
                            np.int32(Tc), np.float32(temperature), np.int32(top_k), np.float32(top_p),
                            np.int32(eot)))
