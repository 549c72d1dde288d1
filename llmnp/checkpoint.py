"""llm.c's model, debug-state and training-state files, and Hugging Face GPT-2 weights (safetensors).

Every llm.c file opens with 256 little-endian int32 (1024 bytes):

model (gpt2_124M.bin)    [20240326, version, maxT, V, L, NH, C, Vp]; then the 16 tensors of
                         params.parameter_specs in order, (out, in) layout, layer-stacked.
                         version 3: float32; version 5: bfloat16 (every tensor, layernorms too).
                         version 1 (before llm.c padded the vocabulary): float32, no Vp field, V rows
                         of wte; llm.c's readers refuse it and ask for a re-export, which pads wte with
                         zero rows to Vp = V rounded up to 128: load_model does that padding itself.
debug state              [20240327, 2, B, T]; inputs int32 (B,T), targets int32 (B,T), logits float32
                         (B,T,V) (not padded), loss float32, the 16 gradients float32 (wte's Vp rows).
training state           [20240527, 1, processes, rank, use_master_weights, should_shuffle, _, _, _, _,
(state_%08d_%05d.bin)    step, ..., [20:22] u64 rng_state, [22:24] u64 rng_state_last_update,
                         [30:32] u64 current_shard_idx, [32:34] u64 current_sample_idx]; then AdamW m and
                         v (float32, this process's share), master weights (float32, if used); then, if
                         the loader shuffles: u64 n_shards, int32 shard order[n_shards], u64 samples in
                         the current shard, int32 their order, and the 2520-byte mt19937 struct
                         (data.MT19937.to_bytes; its u64 seed_ field, which llm.c leaves uninitialised,
                         holds the seed).

bfloat16 on the host is a uint16 array: float32 bits rounded to nearest even (NaN -> 0x7FC0), and back
by a 16-bit shift, as torch converts.

HF GPT-2 (model.safetensors + config.json): keys with or without the `transformer.` prefix, Conv1D
weights stored [in, out] (transposed here, once), lm_head tied to wte (absent, or equal to it), the
attn.bias / attn.masked_bias causal-mask buffers skipped. safetensors is read and written here with
NumPy (8-byte header length, JSON header, raw little-endian data): no dependency.

Not here: the parameter layout itself (params.py), token shards (data.py), the tokenizer file
(tokenizer.py).
"""
import json
import os
import re
import struct

import numpy as np

from llmnp.config import GPT2Config, pad_vocab
from llmnp.data import MT19937
from llmnp.errors import UserError
from llmnp.fileio import HEADER_BYTES, file_size, make_dir, new_header, open_file, read_header, write_atomic
from llmnp.params import num_parameters, parameter_specs

MODEL_MAGIC = 20240326
MODEL_VERSIONS = {"float32": 3, "bfloat16": 5}
MODEL_VERSION_UNPADDED = 1
DEBUG_MAGIC, DEBUG_VERSION = 20240327, 2
STATE_MAGIC, STATE_VERSION = 20240527, 1


# ------------------------------------------------------------------------------------ bfloat16
def float32_to_bf16_bits(x):
    """uint16 bfloat16 bits of float32 values, rounded to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def bf16_bits_to_float32(b):
    """float32 values of uint16 bfloat16 bits (exact)."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------------- model file
def save_model(path, config, flat, dtype="float32"):
    """Write an llm.c model file: dtype "float32" (version 3) or "bfloat16" (version 5)."""
    if dtype not in MODEL_VERSIONS:
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    flat = np.asarray(flat)
    if flat.shape != (num_parameters(config),):
        raise ValueError(f"expected {num_parameters(config)} parameters for {config}, got shape {flat.shape}")
    if not np.isfinite(flat).all():              # a diverged model is never written as a checkpoint
        raise UserError(f"{path} not written: the model holds non-finite values (NaN or inf)")
    c = config
    header = new_header(MODEL_MAGIC, MODEL_VERSIONS[dtype], c.max_seq_len, c.vocab_size, c.num_layers,
                        c.num_heads, c.channels, c.padded_vocab_size)
    if dtype == "bfloat16":
        payload = float32_to_bf16_bits(flat.astype(np.float32)).astype("<u2", copy=False)
    else:
        payload = flat.astype("<f4", copy=False)
    write_atomic(path, header.tobytes(), payload)


def load_model(path):
    """(GPT2Config, flat float32 parameters in parameter_specs order) from an llm.c model file; its
    header, its size and its values (all finite) checked."""
    with open_file(path, "model file") as f:
        header = read_header(f, path, MODEL_MAGIC, (MODEL_VERSION_UNPADDED, 3, 5), "model file")
        version = int(header[1])
        maxT, V, L, NH, C, Vp = (int(v) for v in header[2:8])
        if version == MODEL_VERSION_UNPADDED:
            Vp = V                               # the file holds V rows; padded below
        config = _config(path, maxT, V, Vp, L, NH, C)
        itemsize = 2 if version == 5 else 4
        n = num_parameters(config)
        _expect_size(path, file_size(f), HEADER_BYTES + n * itemsize,
                     f"its header (maxT={maxT} V={V} Vp={Vp} L={L} NH={NH} C={C}) means {n:,} parameters")
        raw = _read_array(f, path, "<u2" if version == 5 else "<f4", n)
    flat = bf16_bits_to_float32(raw) if version == 5 else raw.astype(np.float32)
    if version == MODEL_VERSION_UNPADDED:
        config = _config(path, maxT, V, pad_vocab(V), L, NH, C)
        flat = np.concatenate([flat[:V * C], np.zeros((config.padded_vocab_size - V) * C, np.float32), flat[V * C:]])
    _check_finite_parameters(path, config, flat)
    return config, flat


def _config(path, maxT, V, Vp, L, NH, C):
    if min(maxT, V, L, NH, C) <= 0:
        raise UserError(f"{path}: corrupt header (maxT={maxT} V={V} L={L} NH={NH} C={C})")
    try:
        return GPT2Config(max_seq_len=maxT, vocab_size=V, padded_vocab_size=Vp, num_layers=L,
                          num_heads=NH, channels=C)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def _expect_size(path, size, expected, why):
    if size != expected:
        raise UserError(f"{path}: {why}, so {expected:,} bytes, but the file has {size:,}: "
                        f"{'truncated, or ' if size < expected else ''}its shapes disagree with its header")


def _read_array(f, path, dtype, count):
    """count values of dtype from the open file f at its position (the size was checked before)."""
    a = np.fromfile(f, dtype=dtype, count=count)
    if a.size != count:
        raise UserError(f"{path}: the file ended after {a.size:,} of {count:,} values (changed while read?)")
    return a


UNSTACKED_PARAMETERS = ("wte", "wpe", "lnfw", "lnfb")     # the others are (L, ...): one slice per layer


def _nonfinite(values):
    """(index of the first NaN / inf in a flat array, "NaN" or "inf"), or None when all are finite."""
    if np.isfinite(values).all():
        return None
    i = int(np.flatnonzero(~np.isfinite(values))[0])
    return i, "NaN" if np.isnan(values[i]) else "inf"


def _check_finite_parameters(path, config, flat):
    """One line naming the first parameter tensor (and layer) of flat that holds NaN or inf."""
    if _nonfinite(flat) is None:
        return
    offset = 0
    for name, shape in parameter_specs(config):
        n = int(np.prod(shape))
        found = _nonfinite(flat[offset:offset + n])
        if found is not None:
            i, kind = found
            layer = "" if name in UNSTACKED_PARAMETERS else f" of layer {i // (n // shape[0])}"
            raise UserError(f"{path}: parameter {name}{layer} holds {kind}: the weights are corrupt or "
                            f"from a diverged run (use an earlier checkpoint)")
        offset += n


# ---------------------------------------------------------------------------------- debug state
def write_debug_state(path, inputs, targets, logits, loss, grads_flat, config):
    """llm.c's debug state: one batch, its logits (the first V of each row are kept), its mean loss
    and all parameter gradients (flat, parameter_specs order, wte's padded rows included)."""
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if inputs.ndim != 2 or targets.shape != inputs.shape:
        raise ValueError(f"inputs and targets must both be (B, T), got {inputs.shape} and {targets.shape}")
    B, T = inputs.shape
    V = config.vocab_size
    logits = np.asarray(logits)[..., :V]
    if logits.shape != (B, T, V):
        raise ValueError(f"logits must be (B, T, >=V) = ({B}, {T}, {V}...), got {np.shape(logits)}")
    grads_flat = np.asarray(grads_flat)
    if grads_flat.shape != (num_parameters(config),):
        raise ValueError(f"expected {num_parameters(config)} gradients, got shape {grads_flat.shape}")
    write_atomic(path, new_header(DEBUG_MAGIC, DEBUG_VERSION, B, T).tobytes(),
           inputs.astype("<i4"), targets.astype("<i4"), logits.astype("<f4"),
           np.array([loss], dtype="<f4"), grads_flat.astype("<f4"))


def read_debug_state(path, config=None):
    """dict(B, T, inputs, targets (int32 (B,T)), logits (float32 (B,T,V)), loss (float), grads (flat
    float32)). The file does not record the model: V comes from config (GPT-2's 50257 without one),
    and with a config the gradients must be exactly that model's. (NaN in it is left to the comparison,
    which never counts NaN as within tolerance.)"""
    with open_file(path, "debug state") as f:
        header = read_header(f, path, DEBUG_MAGIC, (DEBUG_VERSION,), "debug state")
        B, T = int(header[2]), int(header[3])
        if B <= 0 or T <= 0:
            raise UserError(f"{path}: corrupt debug state header (B={B} T={T})")
        V = config.vocab_size if config is not None else 50257
        fixed = 8 * B * T + 4 * B * T * V + 4
        size = file_size(f)
        if config is not None:
            _expect_size(path, size, HEADER_BYTES + fixed + 4 * num_parameters(config),
                         f"B={B} T={T} and the model's V={V}, {num_parameters(config):,} parameters mean")
        elif size - HEADER_BYTES <= fixed or (size - HEADER_BYTES - fixed) % 4:
            raise UserError(f"{path}: {size:,} bytes do not fit a debug state of B={B} T={T} V={V} "
                            f"(truncated?)")
        raw = _read_array(f, path, np.uint8, size - HEADER_BYTES)
    ints = raw[:8 * B * T].view("<i4")
    floats = raw[8 * B * T:].view("<f4")
    return {"B": B, "T": T,
            "inputs": ints[:B * T].reshape(B, T).astype(np.int32),
            "targets": ints[B * T:].reshape(B, T).astype(np.int32),
            "logits": floats[:B * T * V].reshape(B, T, V).astype(np.float32),
            "loss": float(floats[B * T * V]),
            "grads": floats[B * T * V + 1:].astype(np.float32)}


# ------------------------------------------------------------------------------- training state
def read_weights(path):
    """(GPT2Config, flat float32 parameters, the file read) from any model path: an llm.c model file,
    Hugging Face weights (a model.safetensors or a folder holding one), or a train_gpt2.py output folder
    (its latest complete checkpoint: the highest step with a DONE_ file). Every command loads so."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"model not found: {path} (give an llm.c .bin, a Hugging Face GPT-2 "
                        f"folder or model.safetensors, or a train_gpt2.py output folder)")
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is not None:
            return (*load_model(latest[1]), latest[1])
        if os.path.exists(os.path.join(path, "model.safetensors")):
            return (*load_hf(path), os.path.join(path, "model.safetensors"))
        if any(re.fullmatch(r"model_\d{8}\.bin", f) for f in os.listdir(path)):
            raise UserError(f"{path}: holds model_*.bin files but no DONE_* marker, so no checkpoint "
                            f"there finished writing (name one .bin file to use it anyway)")
        raise UserError(f"{path}: the folder holds neither a training checkpoint (model_*.bin with "
                        f"DONE_*) nor a model.safetensors")
    if path.endswith(".safetensors"):
        return (*load_hf(path), path)
    return (*load_model(path), path)


def latest_checkpoint(out_dir):
    """(step, model path) of the newest complete checkpoint in a training output dir: the highest step
    with a DONE_%08d marker (written last, after every process's files) and its model_%08d.bin; None
    when no checkpoint there finished writing."""
    steps = [int(m.group(1)) for f in os.listdir(out_dir) if (m := re.fullmatch(r"DONE_(\d{8})", f))]
    for step in sorted(steps, reverse=True):
        path = os.path.join(out_dir, f"model_{step:08d}.bin")
        if os.path.exists(path):
            return step, path
    return None


def save_state(path, step, m, v, master=None, loader_state=None, rank=0, world_size=1,
               should_shuffle=None, rng_state=0, rng_state_last_update=0):
    """llm.c's training-state file for one process. m, v (and master, the fp32 master weights when
    the parameters are kept in bf16): this process's AdamW state, flat. loader_state: the train
    DataLoader's state_dict(); should_shuffle defaults to its flag. rng_state / rng_state_last_update:
    the stochastic-rounding generator's state now and before the last update (u64)."""
    loader_state = loader_state or {"current_shard_idx": 0, "current_sample_idx": 0}
    if should_shuffle is None:
        should_shuffle = bool(loader_state.get("should_shuffle", 0))
    m, v = np.asarray(m, dtype="<f4"), np.asarray(v, dtype="<f4")
    if m.ndim != 1 or m.shape != v.shape or (master is not None and np.shape(master) != m.shape):
        raise ValueError("m, v (and master) must be flat arrays of one length")
    header = new_header(STATE_MAGIC, STATE_VERSION, world_size, rank, int(master is not None), int(should_shuffle))
    header[10] = step
    u64 = header.view("<u8")                     # 128 u64 slots over the 256 int32
    u64[10], u64[11] = rng_state, rng_state_last_update
    u64[15] = loader_state["current_shard_idx"]
    u64[16] = loader_state["current_sample_idx"]
    chunks = [header.tobytes(), m, v] + ([np.asarray(master, dtype="<f4")] if master is not None else [])
    if should_shuffle:
        rng = MT19937(0)
        rng.load_state_dict(loader_state["rng"])
        shards, intra = loader_state["shard_indices"], loader_state["intra_shard_indices"]
        chunks += [struct.pack("<Q", len(shards)), np.asarray(shards, "<i4"),
                   struct.pack("<Q", len(intra)), np.asarray(intra, "<i4"), rng.to_bytes()]
    write_atomic(path, *chunks)


def load_state(path, num_parameters=None):
    """The fields save_state wrote: dict(step, world_size, rank, should_shuffle, rng_state,
    rng_state_last_update, m, v, master (None without master weights), loader_state (for
    DataLoader.load_state_dict)). num_parameters (this process's share) is optional: the file does
    not record it, so without it the layout is worked out from the file size; with it, a file laid
    out for another count is refused with both counts. Every error names the file."""
    with open_file(path, "training state") as f:
        header = read_header(f, path, STATE_MAGIC, (STATE_VERSION,), "training state")
        raw = f.read()
    u64 = np.frombuffer(struct.pack("<256i", *header.tolist()), dtype="<u8")
    world_size, rank, step = int(header[2]), int(header[3]), int(header[10])
    if world_size < 1 or not 0 <= rank < world_size or header[4] not in (0, 1) or header[5] not in (0, 1) \
            or step < 0:
        raise UserError(f"{path}: corrupt training-state header (processes={world_size} rank={rank} "
                        f"master weights={header[4]} shuffle={header[5]} step={step})")
    use_master, shuffle = bool(header[4]), bool(header[5])
    n_arrays = 3 if use_master else 2
    arrays = "m, v and master weights" if use_master else "m and v"
    P = num_parameters
    if P is None or not _state_fits(raw, 4 * P * n_arrays, shuffle):
        found = _state_num_parameters(raw, n_arrays, shuffle)
        if P is not None and found is not None:
            raise UserError(f"{path}: holds AdamW state ({arrays}) for {found:,} parameters, this run's "
                            f"model has {P:,}: the state belongs to a different model (or another -z)")
        if P is None and found is None:
            raise UserError(f"{path}: {len(raw) + HEADER_BYTES:,} bytes do not fit a training state with "
                            f"{arrays}{' and a data-loader state' if shuffle else ''}: truncated or corrupt")
        P = P if P is not None else found
    end = 4 * P * n_arrays
    if len(raw) < end:
        raise UserError(f"{path}: truncated training state ({len(raw) + HEADER_BYTES:,} bytes; {arrays} "
                        f"of {P:,} floats each need {end + HEADER_BYTES:,})")
    floats = np.frombuffer(raw[:end], dtype="<f4").astype(np.float32)
    m, v, master = floats[:P], floats[P:2 * P], floats[2 * P:] if use_master else None
    for name, a in (("AdamW m", m), ("AdamW v", v), ("master weights", master)):
        found = _nonfinite(a) if a is not None else None
        if found is not None:
            raise UserError(f"{path}: {name} holds {found[1]} (first at parameter {found[0]:,} of {P:,}): "
                            f"the state is corrupt or from a diverged run (resume from an earlier checkpoint)")
    loader_state = {"num_processes": world_size, "rank": rank, "should_shuffle": int(shuffle),
                    "current_shard_idx": int(u64[15]), "current_sample_idx": int(u64[16])}
    if shuffle:
        section = _loader_section(raw, end)
        if section is None:
            raise UserError(f"{path}: truncated or corrupt data-loader state after the optimizer state")
        shards, intra, rng_raw = section
        try:
            rng = MT19937.from_bytes(rng_raw)
        except UserError as e:
            raise UserError(f"{path}: corrupt data-loader state ({e})") from None
        if loader_state["current_shard_idx"] >= len(shards) or loader_state["current_sample_idx"] > len(intra):
            raise UserError(f"{path}: corrupt data-loader state (shard {loader_state['current_shard_idx']} "
                            f"of {len(shards)}, sample {loader_state['current_sample_idx']} of {len(intra)})")
        loader_state.update(shard_indices=shards, intra_shard_indices=intra, rng=rng.state_dict())
    elif len(raw) != end:
        raise UserError(f"{path}: {len(raw) - end:,} unexpected bytes after the optimizer state ({arrays} "
                        f"of {P:,} floats each)")
    return {"step": step, "world_size": world_size, "rank": rank,
            "should_shuffle": shuffle, "rng_state": int(u64[10]), "rng_state_last_update": int(u64[11]),
            "m": m, "v": v, "master": master, "loader_state": loader_state}


def _loader_section(raw, end):
    """(shard order, sample order, mt19937 bytes) of the data-loader state starting at byte `end`:
    u64 n, n int32 (a permutation of 0..n-1), u64 k, k int32 (a permutation), the mt19937 struct;
    None when it does not parse so."""
    try:
        n = struct.unpack_from("<Q", raw, end)[0]
        if end + 16 + 4 * n > len(raw):              # a count past the file's end (up to 2^64 - 1)
            return None
        shards = np.frombuffer(raw, "<i4", n, end + 8)
        k = struct.unpack_from("<Q", raw, end + 8 + 4 * n)[0]
        if end + 16 + 4 * n + 4 * k > len(raw):
            return None
        intra = np.frombuffer(raw, "<i4", k, end + 16 + 4 * n)
    except (struct.error, ValueError):
        return None
    rng_raw = raw[end + 16 + 4 * n + 4 * k:]
    if len(rng_raw) != MT19937.STRUCT_BYTES or not _is_permutation(shards) or not _is_permutation(intra):
        return None
    return shards.tolist(), intra.tolist(), rng_raw


def _is_permutation(order):
    return np.array_equal(np.sort(order), np.arange(len(order)))


def _state_fits(raw, end, shuffle):
    """Whether the payload is `end` bytes of floats, then (with shuffle) a data-loader state."""
    return _loader_section(raw, end) is not None if shuffle else len(raw) == end


def _state_num_parameters(raw, n_arrays, shuffle):
    """P from the payload size, or None when no P fits. With a shuffle state after the floats, walk
    back from the end: the mt19937 struct, then the sample order (u64 k, k int32), then the shard
    order (u64 n, n int32)."""
    end = len(raw)
    if shuffle:
        end -= MT19937.STRUCT_BYTES
        for _ in range(2):
            end = _counted_permutation_start(raw, end) if end >= 8 else None
            if end is None:
                return None
    if end <= 0 or end % (4 * n_arrays):
        return None
    return end // (4 * n_arrays)


def _counted_permutation_start(raw, end):
    """Where [u64 k][k int32, a permutation of 0..k-1] ending at `end` starts (k >= 1), or None.
    Unambiguous: a shorter false match would need 0 twice in the permutation. The candidates (a u64
    equal to its distance from `end` in int32s) are found with whole-array comparisons, a chunk of
    positions at a time from the end, so a large file that does not parse is refused quickly."""
    r = end % 4
    words = np.frombuffer(raw, "<u4", (end - r) // 4, r)      # words[j] starts at byte r + 4j
    J = (end - 8 - r) // 4                                    # [u64 k] at word j holds k = J - j
    chunk = 1 << 22
    for hi_j in range(J, 0, -chunk):                          # j in [lo_j, hi_j): small k first
        lo_j = max(0, hi_j - chunk)
        j = np.arange(lo_j, hi_j)
        match = (words[lo_j:hi_j] == (J - j)) & (words[lo_j + 1:hi_j + 1] == 0)
        for jj in np.flatnonzero(match)[::-1]:
            pos = r + 4 * (lo_j + int(jj))
            k = J - (lo_j + int(jj))
            if _is_permutation(np.frombuffer(raw, "<i4", k, pos + 8)):
                return pos
    return None


# ---------------------------------------------------------------------------------- safetensors
SAFETENSORS_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2"}


def read_safetensors(path):
    """{name: float32 array} of a .safetensors file (F32, F64, F16 or BF16 tensors). The header is
    checked entry by entry, and the tensors must tile the data exactly (no overlap, no gap, nothing
    after the last), as the format requires."""
    with open_file(path, "safetensors file") as f:
        size = file_size(f)
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        header = None
        if 0 < n < 100_000_000 and 8 + n <= size:
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
        if not isinstance(header, dict):
            raise UserError(f"{path}: not a safetensors file (no JSON object after its 8-byte header length)")
        data_size = size - 8 - n
        entries = sorted((_safetensors_entry(path, name, info, data_size) + (name,)
                          for name, info in header.items() if name != "__metadata__"), key=lambda e: e[:2])
        pos, previous = 0, None
        for begin, end, _, _, name in entries:
            if begin < pos:
                raise UserError(f"{path}: tensors {previous} and {name} overlap (data bytes {begin:,} to {pos:,})")
            if begin > pos:
                raise UserError(f"{path}: data bytes {pos:,} to {begin:,} belong to no tensor: a corrupt file")
            pos, previous = end, name
        if pos != data_size:
            raise UserError(f"{path}: {data_size - pos:,} bytes after the last tensor's data: a corrupt file")
        tensors = {}
        for begin, end, dtype, shape, name in entries:
            f.seek(8 + n + begin)
            a = _read_array(f, path, SAFETENSORS_DTYPES[dtype], int(np.prod(shape, dtype=np.int64))).reshape(shape)
            tensors[name] = bf16_bits_to_float32(a) if dtype == "BF16" else a.astype(np.float32)
    return tensors


def _safetensors_entry(path, name, info, data_size):
    """(begin, end, dtype, shape) of one tensor's header entry, each field checked."""
    def bad(what):
        return UserError(f"{path}: tensor {name}: {what} (a corrupt safetensors header)")

    def counts(x, n=None):
        return isinstance(x, list) and (n is None or len(x) == n) and \
            all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x)
    if not isinstance(info, dict):
        raise bad(f"its entry is {type(info).__name__} {info!r:.40}, not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype is None or shape is None or offsets is None:
        raise bad("its entry lacks " + ", ".join(k for k in ("dtype", "shape", "data_offsets") if info.get(k) is None))
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise UserError(f"{path}: tensor {name} has dtype {dtype!r:.40}, not a float type "
                        f"({', '.join(SAFETENSORS_DTYPES)})")
    if not counts(shape):
        raise bad(f"shape {shape!r:.40} is not a list of non-negative integers")
    if not counts(offsets, 2) or offsets[0] > offsets[1]:
        raise bad(f"data_offsets {offsets!r:.40} is not [begin, end] with 0 <= begin <= end")
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
    if end - begin != nbytes:
        raise bad(f"shape {shape} of {dtype} takes {nbytes:,} bytes, its data_offsets span {end - begin:,}")
    if end > data_size:
        raise UserError(f"{path}: tensor {name} lies outside the file (its data ends at byte {end:,}, the "
                        f"file holds {data_size:,}): truncated?")
    return begin, end, dtype, tuple(shape)


def write_safetensors(path, tensors, metadata=None):
    """Write {name: float32 array} as safetensors (tensors sorted by name, header padded to 8 bytes)."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    arrays = [(name, np.ascontiguousarray(tensors[name], dtype="<f4")) for name in sorted(tensors)]
    for name, a in arrays:
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    write_atomic(path, struct.pack("<Q", len(blob)), blob, *(a for _, a in arrays))


# ---------------------------------------------------------------------------------- HF GPT-2
# llmnp tensor -> (HF GPT-2 key, stored [in, out] by Conv1D so transposed here); {l} = layer
HF_KEYS = {
    "wte": ("wte.weight", False), "wpe": ("wpe.weight", False),
    "ln1w": ("h.{l}.ln_1.weight", False), "ln1b": ("h.{l}.ln_1.bias", False),
    "qkvw": ("h.{l}.attn.c_attn.weight", True), "qkvb": ("h.{l}.attn.c_attn.bias", False),
    "attprojw": ("h.{l}.attn.c_proj.weight", True), "attprojb": ("h.{l}.attn.c_proj.bias", False),
    "ln2w": ("h.{l}.ln_2.weight", False), "ln2b": ("h.{l}.ln_2.bias", False),
    "fcw": ("h.{l}.mlp.c_fc.weight", True), "fcb": ("h.{l}.mlp.c_fc.bias", False),
    "fcprojw": ("h.{l}.mlp.c_proj.weight", True), "fcprojb": ("h.{l}.mlp.c_proj.bias", False),
    "lnfw": ("ln_f.weight", False), "lnfb": ("ln_f.bias", False),
}
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")      # the causal mask, not parameters
GPT2_HEAD_SIZE = 64                                   # every OpenAI GPT-2 size: NH = C / 64


def _hf_files(path):
    """(model.safetensors path, config.json path or None) for a file or a folder."""
    if os.path.isdir(path):
        weights = os.path.join(path, "model.safetensors")
        if not os.path.lexists(weights):
            raise UserError(f"{path}: no model.safetensors in this folder (llmnp reads HF GPT-2 weights "
                            f"in safetensors form only)")
    else:
        weights = path
    config_json = os.path.join(os.path.dirname(weights), "config.json")
    return weights, config_json if os.path.lexists(config_json) else None


HF_CONFIG_FIELDS = ("vocab_size", "n_positions", "n_ctx", "n_layer", "n_embd", "n_head")


def _read_hf_config(path):
    """The sizes config.json gives ({field: positive int}, only the fields present), checked."""
    with open_file(path, "HF config file") as f:
        raw = f.read()
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: holds a JSON {type(cfg).__name__}, not an object of GPT-2 settings")
    sizes = {}
    for key in HF_CONFIG_FIELDS:
        if key in cfg:
            value = cfg[key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"{path}: {key} is {value!r:.40}, not a positive integer")
            sizes[key] = value
    return sizes


def load_hf(path):
    """(GPT2Config, flat float32 parameters) from Hugging Face GPT-2 weights of any size: a
    model.safetensors file, or a folder holding one (and config.json; without it the sizes come from
    the tensor shapes, with 64-wide heads as in every GPT-2). Shapes, names and values (finite) are
    checked."""
    weights, config_json = _hf_files(path)
    raw = read_safetensors(weights)
    tensors = {}
    for key, a in raw.items():
        key = key[len("transformer."):] if key.startswith("transformer.") else key
        if not key.endswith(HF_BUFFERS):
            tensors[key] = a
    for key in ("wte.weight", "wpe.weight"):
        if key not in tensors:
            raise UserError(f"{weights}: no {key}: not GPT-2 weights")
        if tensors[key].ndim != 2:
            raise UserError(f"{weights}: {key} has shape {tensors[key].shape}, expected 2-D (rows, channels)")
    V, C = tensors["wte.weight"].shape
    maxT = tensors["wpe.weight"].shape[0]
    L = len({k.split(".")[1] for k in tensors if k.startswith("h.")})
    NH = C // GPT2_HEAD_SIZE
    if config_json is not None:
        cfg = _read_hf_config(config_json)
        NH = cfg.get("n_head", NH)
        given = (cfg.get("vocab_size", V), cfg.get("n_positions", cfg.get("n_ctx", maxT)),
                 cfg.get("n_layer", L), cfg.get("n_embd", C))
        if given != (V, maxT, L, C):
            raise UserError(f"{config_json} says V, maxT, L, C = {given}, the weights have {(V, maxT, L, C)}")
        if NH <= 0 or C % NH:
            raise UserError(f"{config_json}: n_head={NH} does not divide n_embd={C}")
    elif C % GPT2_HEAD_SIZE:
        raise UserError(f"{weights}: C={C} is not a multiple of 64 and there is no config.json to give "
                        f"the number of heads")
    config = _config(weights, maxT, V, pad_vocab(V), L, NH, C)
    if "lm_head.weight" in tensors:
        head = tensors.pop("lm_head.weight")
        _check_finite_tensor(weights, "lm_head.weight", head)
        if not np.array_equal(head, tensors["wte.weight"]):
            raise UserError(f"{weights}: lm_head.weight differs from wte.weight; llmnp's GPT-2 ties them")
    parts = []
    for name, shape in parameter_specs(config):
        key, conv1d = HF_KEYS[name]
        per_layer = "{l}" in key
        want = (V, C) if name == "wte" else tuple(shape[1:] if per_layer else shape)   # (out, in)
        stored = want[::-1] if conv1d else want
        for k in [key.format(l=l) for l in range(L)] if per_layer else [key]:
            if k not in tensors:
                raise UserError(f"{weights}: tensor {k} is missing")
            a = tensors.pop(k)
            if a.shape != stored:
                raise UserError(f"{weights}: {k} has shape {a.shape}, expected {stored}")
            _check_finite_tensor(weights, k, a)
            parts.append((a.T if conv1d else a).ravel())
        if name == "wte":
            parts.append(np.zeros((config.padded_vocab_size - V) * C, np.float32))   # padded rows
    if tensors:
        raise UserError(f"{weights}: unexpected tensors {sorted(tensors)[:3]}: not a GPT-2 checkpoint?")
    return config, np.concatenate(parts).astype(np.float32)


def _check_finite_tensor(path, name, a):
    found = _nonfinite(a.ravel())
    if found is not None:
        raise UserError(f"{path}: {name} holds {found[1]}: the weights are corrupt or from a diverged run")


def save_hf(out_dir, config, flat):
    """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads: float32,
    `transformer.` keys, Conv1D [in, out] weights, wte without its padded rows, lm_head tied (absent)."""
    flat = np.asarray(flat, dtype=np.float32)
    if flat.shape != (num_parameters(config),):
        raise ValueError(f"expected {num_parameters(config)} parameters, got shape {flat.shape}")
    c = config
    tensors, offset = {}, 0
    for name, shape in parameter_specs(config):
        n = int(np.prod(shape))
        a = flat[offset:offset + n].reshape(shape)
        offset += n
        key, conv1d = HF_KEYS[name]
        if name == "wte":
            a = a[:c.vocab_size]
        for l, t in (enumerate(a) if "{l}" in key else [(None, a)]):
            tensors["transformer." + key.format(l=l)] = t.T if conv1d else t
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": c.vocab_size, "n_positions": c.max_seq_len, "n_ctx": c.max_seq_len,
        "n_embd": c.channels, "n_layer": c.num_layers, "n_head": c.num_heads, "n_inner": None,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
        "attn_pdrop": 0.0, "scale_attn_weights": True, "tie_word_embeddings": True,
        "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "float32",
    }
    make_dir(out_dir, "export folder")
    write_atomic(os.path.join(out_dir, "config.json"), json.dumps(hf_config, indent=2).encode())
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata={"format": "pt"})
