"""Attention launchers (attention.cu, attention_hopper.cu; llmnp/attention.py is the reference and
states the rules).

Three sets of kernels, one chosen per call by kernels_for: on a Hopper GPU (compute capability 9.0),
bf16 storage with GPT-2's head size 64 runs the warpgroup kernels of attention_hopper.cu; bf16 with a
head size that is a multiple of 16 up to 128 the mma.sync tensor-core kernels of attention.cu (the
portable path, and the reference for the Hopper ones); everything else (fp32 storage, other head sizes up
to 128) the fp32 CUDA-core kernels, the reference for both.
lse and the backward's D = rowsum(dout * out) are float32 (B,NH,T) (for the Hopper backward's tensor
copies, D and a copy of lse in rows padded to 16 bytes: hopper_maps); the tensor-core backwards add dq
into a float32 scratch buffer first: (B,T,C) rows for the mma kernel, (B*NH, ceil(T/64), 64*hs) query
tiles for the wgmma one (attention_hopper.cu says why). Given dqkv_bias, the backward also sums dqkv's
rows into it (the qkv projection's bias gradient): the tensor-core kernels leave partial sums as they
store dqkv.
Shapes: B batch, T time, C channels, NH heads, hs = C/NH; qkv (B,T,3C), out/dout (B,T,C).
"""
import numpy as np

from llmnp.cuda.matmul import matmul_dbias
from llmnp.cuda.runtime import blocks, check, cupy, hopper, kernel, num_sms, pack, scratch, storage_is_bf16, tensor_map

ROWS = 64                     # query (or key) rows per block in every kernel (attention.cu ROWS1, TILE)
TILE1 = 32                    # attention.cu TILE1


def _shapes(out, lse, qkv):
    B, T, C = out.shape
    NH = lse.shape[1]
    if C % NH or lse.shape != (B, NH, T) or qkv.shape != (B, T, 3 * C):
        raise ValueError(f"attention shapes disagree: out {out.shape}, lse {lse.shape}, qkv {qkv.shape}")
    hs = C // NH
    if hs > 128:
        raise ValueError(f"the GPU attention kernels take head sizes up to 128, got {hs}")
    return B, T, C, NH, hs


def kernels_for(dtype, hs, *arrays):
    """"wgmma" (a Hopper GPU and hs 64), "mma" (hs % 16 == 0 up to 128), both for bf16 storage and
    16-byte aligned rows; else "fp32"."""
    if not (storage_is_bf16(dtype) and hs % 16 == 0 and hs <= 128 and all(a.data.ptr % 16 == 0 for a in arrays)):
        return "fp32"
    return "wgmma" if hs == 64 and hopper() else "mma"


def chosen(kernels, dtype, hs, *arrays):
    """The kernels a launcher runs: kernels_for's choice, or the set a caller forces (tests, dev/cuda's
    variants), refused where it cannot run."""
    if kernels is None:
        return kernels_for(dtype, hs, *arrays)
    best = kernels_for(dtype, hs, *arrays)
    possible = {"fp32": True, "mma": best != "fp32", "wgmma": best == "wgmma"}
    if not possible.get(kernels, False):
        raise ValueError(f"the {kernels!r} attention kernels cannot run {np.dtype(dtype).name} storage with head "
                         f"size {hs} here (there are {', '.join(k for k, ok in possible.items() if ok)})")
    return kernels


def tile_smem(hs, tiles, floats=0):
    """Dynamic shared memory of a tensor-core kernel: `tiles` bf16 tiles of ROWS rows at pitch hs + 8,
    then `floats` float32 values."""
    return tiles * ROWS * (hs + 8) * 2 + 4 * floats


def tensor_core_kernel(name, dtype, hs, smem, family="attention"):
    k = kernel(family, name, dtype, HS=hs)
    k.max_dynamic_shared_size_bytes = smem          # above 48 KB needs the opt-in (87 KB at hs = 128)
    return k


# attention_hopper.cu's shared memory: 64 x 64 bf16 tiles (8 KB), and up to 1 KB to align them to 1024 bytes
FWD_STAGES = 3                                        # attention_hopper.cu: K, V stages of the forward
HOPPER_FORWARD_SMEM = (2 + 2 * FWD_STAGES) * 8192 + 8 * FWD_STAGES + 1024   # Q (128 rows), K | V per stage, mbarriers
WS_STAGES, WS_DS = 3, 2                               # attention_hopper.cu: query tile stages, dS^T buffers
# K and V (128 keys: 4 tiles), Q | dO per stage, dS^T (128 keys) per buffer, lse and D per stage, two
# 64 x 64 float dq staging buffers, an mbarrier per stage and one for K and V
HOPPER_BACKWARD_SMEM = ((4 + 2 * WS_STAGES + 2 * WS_DS + 2 * 2) * 8192 + 2 * WS_STAGES * ROWS * 4
                        + 8 * (WS_STAGES + 1) + 1024)
_maps = {}


def hopper_maps(qkv, dout=None, lse_rows=None, D=None):
    """The tensor maps attention_hopper.cu's kernels copy through, a (n, 128) uint8 device array built once
    per set of arrays: qkv (B,T,3C) and, for the backward, dout (B,T,C) in 64 x 64 boxes, 128-byte swizzled;
    lse_rows and D (B*NH, pitch) float, pitch a multiple of 4 (rows 16-byte aligned), in boxes of 64 of
    each row's first T."""
    cp = cupy()
    B, T, C3 = qkv.shape
    arrays = [a for a in (qkv, dout, lse_rows, D) if a is not None]
    key = (cp.cuda.runtime.getDevice(),) + tuple((a.data.ptr, a.shape) for a in arrays)
    maps = _maps.get(key)
    if maps is None:
        def tokens(a, C):
            pitch = a.itemsize * C
            return tensor_map(a.data.ptr, a.dtype, (C, T, B), (pitch, pitch * T), (ROWS, ROWS, 1), swizzle=True)

        def rows(a):
            n, pitch = a.shape
            return tensor_map(a.data.ptr, a.dtype, (T, n), (a.itemsize * pitch,), (ROWS, 1), swizzle=False)
        built = [tokens(qkv, C3)]
        if dout is not None:
            built += [tokens(dout, C3 // 3), rows(lse_rows), rows(D)]
        if len(_maps) >= 64:                               # a model has a few (a qkv per layer)
            _maps.clear()
        maps = _maps[key] = cp.asarray(np.stack(built))
    return maps


def attention_forward(out, lse, qkv, kernels=None):
    """out (B,T,C), lse (B,NH,T) <- qkv (B,T,3C). kernels: None chooses (kernels_for), else forced."""
    B, T, C, NH, hs = _shapes(out, lse, qkv)
    check(out.dtype, out=out, qkv=qkv)
    check(np.float32, lse=lse)
    kernels = chosen(kernels, out.dtype, hs, out, qkv)
    args = (out, lse, qkv, np.int32(B), np.int32(T), np.int32(NH))
    if kernels == "wgmma":
        smem = HOPPER_FORWARD_SMEM
        tensor_core_kernel("attention_forward_wgmma", out.dtype, hs, smem, "attention_hopper")(
            (blocks(T, 2 * ROWS), B * NH), (256,), args + (hopper_maps(qkv),), shared_mem=smem)
    elif kernels == "mma":
        smem = tile_smem(hs, 5)
        tensor_core_kernel("attention_forward_mma", out.dtype, hs, smem)((blocks(T, ROWS), B * NH), (128,), args,
                                                                           shared_mem=smem)
    else:
        kernel("attention", "attention_forward_fp32", out.dtype, HS=hs)((blocks(T, ROWS), B * NH), (ROWS,), args)


def rowdot(D, dq_acc, dout, out, NH, pitch=None, lse_copy=None, lse=None):
    """D (B*NH rows of pitch floats, T by default) <- rowsum(dout * out) per head; dq_acc (float, any shape),
    unless None, zeroed; lse_copy, unless None, <- lse (B,NH,T) in rows of the same pitch."""
    B, T, C = out.shape
    hs = C // NH
    packs = hs // pack(out.dtype)                          # attention_backward_rowdot's threads per row
    lanes = packs if hs % pack(out.dtype) == 0 and 32 % packs == 0 else 32
    k = kernel("attention", "attention_backward_rowdot", out.dtype, HS=hs)
    none = np.uint64(0)
    k((blocks(B * T * NH * lanes, 256),), (256,),
      (D, none if dq_acc is None else dq_acc, np.int64(0 if dq_acc is None else dq_acc.size),
       none if lse_copy is None else lse_copy, none if lse is None else lse, dout, out,
       np.int32(B), np.int32(T), np.int32(NH), np.int32(pitch or T)))


def dq_store_grid(dqkv):
    """attention_backward_dq_store's grid and block: a thread per 16-byte pack of a row's C columns, rows
    per block so that a block has about 256 threads, and up to 8 blocks per SM striding over the rows."""
    B, T, C3 = dqkv.shape
    packs = C3 // 3 // pack(dqkv.dtype)
    rows = max(1, 256 // packs)
    return (min(blocks(B * T, 4 * rows), 8 * num_sms()),), (packs, rows)   # 4: attention.cu's DQ_ROWS


def dq_store(dqkv, dq_acc, dbias_q, NH):
    """dqkv (B,T,3C)'s q part <- dq_acc (B,T,C) float / sqrt(hs); dbias_q (dq_store_grid's threads over
    y, C) float, unless None, <- each thread row's column sums of what it stored."""
    B, T, C3 = dqkv.shape
    grid, block = dq_store_grid(dqkv)
    k = kernel("attention", "attention_backward_dq_store", dqkv.dtype, HS=C3 // 3 // NH)
    k(grid, block, (dqkv, np.uint64(0) if dbias_q is None else dbias_q, dq_acc, np.int32(B), np.int32(T), np.int32(NH)))


def dq_store_tiles(dqkv, dq_acc, dbias_q, NH):
    """dqkv (B,T,3C)'s q part <- dq_acc (B*NH, ceil(T/64), 64*hs) float / sqrt(hs), attention_backward_wgmma's
    query tiles, a block each; dbias_q (B*ceil(T/64), C) float, unless None, <- each block's column sums of
    what it stored."""
    B, T, C3 = dqkv.shape
    k = kernel("attention_hopper", "attention_backward_dq_store_tiles", dqkv.dtype, HS=C3 // 3 // NH)
    k((blocks(T, ROWS), B * NH), (128,),
      (dqkv, np.uint64(0) if dbias_q is None else dbias_q, dq_acc, np.int32(B), np.int32(T), np.int32(NH)))


def attention_backward(dqkv, dout, qkv, out, lse, kernels=None, dqkv_bias=None):
    """dqkv (B,T,3C) overwritten <- dout (B,T,C), with qkv, out, lse saved by forward. kernels: as forward's.
    dqkv_bias (3C,), unless None: += dqkv's rows summed (the qkv projection's bias gradient, its dout
    being dqkv); the tensor-core kernels leave partial column sums as they store dqkv (q: one row per
    thread row of dq_store or per tile of dq_store_tiles, k | v: per 16 keys, or 64 with wgmma),
    attention_backward_dbias adds them up."""
    B, T, C, NH, hs = _shapes(out, lse, qkv)
    check(out.dtype, dqkv=dqkv, dout=dout, qkv=qkv, out=out)
    check(np.float32, lse=lse)
    if dqkv_bias is not None:
        check(out.dtype, dqkv_bias=dqkv_bias)
    kernels = chosen(kernels, out.dtype, hs, dqkv, dout, qkv, out)
    sizes = (np.int32(B), np.int32(T), np.int32(NH))
    pitch = 4 * blocks(T, 4) if kernels == "wgmma" else T   # D's rows: 16-byte aligned for tensor copies
    D = scratch("attention_D", B * NH * pitch)
    if kernels == "fp32":
        rowdot(D, None, dout, out, NH)
        smem = 4 * (2 * ROWS * (hs + 1) + 2 * TILE1 * hs + 2 * TILE1)
        for name in ("attention_backward_dkdv_fp32", "attention_backward_dq_fp32"):
            k = kernel("attention", name, out.dtype, HS=hs)
            k.max_dynamic_shared_size_bytes = smem
            k((blocks(T, ROWS), B * NH), (ROWS,), (dqkv, dout, qkv, lse, D) + sizes, shared_mem=smem)
        if dqkv_bias is not None:
            matmul_dbias(dqkv_bias, dqkv)
        return
    # the tensor-core kernels add dq into dq_acc (zeroed by rowdot), then a store kernel writes it into dqkv;
    # rows_q, rows_kv: the qkv bias's partial rows they leave (q: the store's; k | v: the kernel's)
    if kernels == "wgmma":                                 # in 64-query tiles, stored a block per tile
        dq_size, rows_q, rows_kv = B * NH * blocks(T, ROWS) * ROWS * hs, B * blocks(T, ROWS), B * blocks(T, ROWS)
    else:                                                  # in rows (B,T,C), one partial row per thread row
        (dq_blocks,), (_, dq_rows) = dq_store_grid(dqkv)
        dq_size, rows_q, rows_kv = B * T * C, dq_blocks * dq_rows, B * blocks(T, 16)
    dq_acc = scratch("attention_dq", dq_size)
    dbias_kv = dbias_q = None
    if dqkv_bias is not None:
        dbias_kv = scratch("attention_dbias_kv", rows_kv * 2 * C)
        dbias_q = scratch("attention_dbias_q", rows_q * C)
    outputs = (dqkv, dq_acc, np.uint64(0) if dbias_kv is None else dbias_kv)
    if kernels == "wgmma":      # 128 keys per block of three warpgroups, which copy everything in by tensor maps:
        lse_rows = scratch("attention_lse", B * NH * pitch)   # so lse too, copied into rows like D's
        rowdot(D, dq_acc, dout, out, NH, pitch, lse_rows, lse)
        maps = hopper_maps(qkv, dout, lse_rows.reshape(B * NH, pitch), D.reshape(B * NH, pitch))
        smem = HOPPER_BACKWARD_SMEM
        k = tensor_core_kernel("attention_backward_wgmma", out.dtype, hs, smem, "attention_hopper")
        k((blocks(T, 2 * ROWS), B * NH), (384,), outputs + sizes + (maps,), shared_mem=smem)
        dq_store_tiles(dqkv, dq_acc, dbias_q, NH)
    else:
        rowdot(D, dq_acc, dout, out, NH)
        smem = tile_smem(hs, 6, 4 * ROWS) + ROWS * (ROWS + 8) * 2                       # + dS^T at pitch 72
        k = tensor_core_kernel("attention_backward_mma", out.dtype, hs, smem)
        k((blocks(T, ROWS), B * NH), (128,), outputs + (dout, qkv, lse, D) + sizes, shared_mem=smem)
        dq_store(dqkv, dq_acc, dbias_q, NH)
    if dqkv_bias is not None:
        kernel("attention", "attention_backward_dbias", out.dtype, HS=hs)(
            (blocks(3 * C, 32),), (32, 32), (dqkv_bias, dbias_q, np.int32(rows_q), dbias_kv, np.int32(rows_kv),
                                             np.int32(C)))
