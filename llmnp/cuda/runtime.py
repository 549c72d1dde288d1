"""What every launcher shares: CuPy and the GPU found once, each .cu file compiled once per process
(per storage dtype and -D constants), argument checks, scratch buffers, and cuBLAS products.

A kernel file is compiled with NVRTC through cupy.RawModule from its own text, unchanged; the only
thing injected is -D constants (LLMNP_BF16, HS, and a hash of the shared header so CuPy's on-disk
cache notices when it changes). Not here: any kernel or layer.
"""
import ctypes
import functools
import hashlib
import os

import numpy as np

from llmnp.errors import UserError

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
HEADERS = ("common.cuh",)


@functools.lru_cache(maxsize=None)
def cupy():
    """The cupy module, once a GPU is known to be there; UserError otherwise."""
    try:
        import cupy as cp
    except ImportError as e:
        raise UserError("device 'cuda' needs CuPy: pip install -e '.[cuda]' (cupy-cuda13x)") from e
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception:            # no driver, or the driver finds no device
        count = 0
    if count == 0:
        raise UserError("device 'cuda' but no CUDA GPU was found (cupy.cuda.is_available() is False); use device 'cpu'")
    try:
        import ml_dtypes  # noqa: F401  registers numpy.dtype("bfloat16"), which CuPy then supports
    except ImportError:
        pass
    return cp


def include_dirs():
    """The kernel folder (common.cuh) and CUDA's own headers (cuda_bf16.h), where they can be found."""
    dirs = [KERNEL_DIR]
    try:
        from cuda import pathfinder
        found = pathfinder.find_nvidia_header_directory("cudart")
        if found:
            dirs.append(found)
    except Exception:
        pass
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "include", "cuda_bf16.h")):
            dirs.append(os.path.join(root, "include"))
            break
    return dirs


@functools.lru_cache(maxsize=None)
def _headers_hash():
    h = hashlib.sha1()
    for name in HEADERS:
        with open(os.path.join(KERNEL_DIR, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def compile_options(bf16, defines=()):
    """NVRTC options for one build of a kernel file: storage type, -D constants, include folders."""
    opts = ["-std=c++17", f"-DLLMNP_BF16={int(bool(bf16))}", f"-DLLMNP_HEADERS=0x{_headers_hash()}"]
    opts += [f"-D{name}={value}" for name, value in defines]
    opts += [f"-I{d}" for d in include_dirs()]
    return tuple(opts)


def source(family):
    with open(os.path.join(KERNEL_DIR, family + ".cu")) as f:
        return f.read()


# kernel files built for one GPU architecture only (CuPy's default is the device's own, e.g. sm_90)
ARCH = {"attention_hopper": "sm_90a"}      # wgmma: Hopper (compute capability 9.0) only


def dev_arch(code):
    """The architecture a variant file (dev/cuda) is built for: that of an ARCH file it includes."""
    return next((arch for family, arch in ARCH.items() if f'#include "{family}.cu"' in code), None)


@functools.lru_cache(maxsize=None)
def hopper():
    """Whether the device runs sm_90a code (compute capability 9.0: H100, H200); asked once."""
    return cupy().cuda.Device().compute_capability == "90"


@functools.lru_cache(maxsize=None)
def _module(family, bf16, defines):
    cp = cupy()
    arch = ((f"-arch={ARCH[family]}",) if family in ARCH else ())
    return cp.RawModule(code=source(family), options=compile_options(bf16, defines) + arch)


@functools.lru_cache(maxsize=None)
def kernel(family, name, dtype, **defines):
    """The kernel `name` of llmnp/cuda/<family>.cu, built for storage dtype (float32 or bfloat16)."""
    bf16 = storage_is_bf16(dtype)
    try:
        return _module(family, bf16, tuple(sorted(defines.items()))).get_function(name)
    except UserError:
        raise
    except Exception as e:
        cp = cupy()
        if isinstance(e, cp.cuda.compiler.CompileException) or "nvrtc" in str(e).lower():
            raise UserError(f"compiling llmnp/cuda/{family}.cu failed (is the CUDA toolkit's NVRTC installed? "
                            f"pip install -e '.[cuda]'):\n{e}") from e
        raise


def storage_is_bf16(dtype):
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return False
    if dtype.name == "bfloat16":
        return True
    raise TypeError(f"the GPU stores float32 or bfloat16, not {dtype}")


def check(dtype, **arrays):
    """Every array is a C-contiguous CuPy array of dtype; raises TypeError / ValueError naming the culprit."""
    cp = cupy()
    dtype = np.dtype(dtype)
    for name, a in arrays.items():
        if not isinstance(a, cp.ndarray):
            raise TypeError(f"{name} must be a CuPy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{name} must be {dtype}, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")


def blocks(n, per_block):
    return (int(n) + per_block - 1) // per_block


def pack(dtype):
    """Elements in the 16-byte packs the elementwise kernels move per thread (common.cuh PACK)."""
    return 16 // np.dtype(dtype).itemsize


@functools.lru_cache(maxsize=None)
def num_sms():
    return cupy().cuda.Device().attributes["MultiProcessorCount"]


@functools.lru_cache(maxsize=None)
def max_shared():
    """The shared memory (bytes) one block may take on this device, static and dynamic (H100, H200: 227 KiB)."""
    return cupy().cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]


@functools.lru_cache(maxsize=None)
def resident_blocks(k, block_size, smem):
    """How many blocks of kernel k fit on the GPU at once (its registers and shared memory permitting)."""
    from cupy_backends.cuda.api import driver
    per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(k.kernel.ptr, block_size, smem)
    return max(1, per_sm) * num_sms()


_scratch = {}


def scratch(name, n, dtype=np.float32):
    """A reusable device buffer of at least n elements (grown, never shrunk): the front n of it."""
    cp = cupy()
    buf = _scratch.get((name, np.dtype(dtype)))
    if buf is None or buf.size < n:
        buf = cp.empty(max(int(n), 1), dtype=dtype)
        _scratch[(name, np.dtype(dtype))] = buf
    return buf[:n]


# ------------------------------------------------------------------------------------ tensor maps
# What a kernel's tensor copies (TMA, Hopper's copy engine) read: a 128-byte description of an array
# (where it is, its shape and strides, the box one copy moves and how it lands in shared memory), built
# by the driver. CuPy has no binding for cuTensorMapEncodeTiled, so it is called through ctypes.
_TENSOR_MAP_TYPES = {"float32": 7, "bfloat16": 9}     # CU_TENSOR_MAP_DATA_TYPE_FLOAT32, _BFLOAT16
_SWIZZLE_128B, _L2_PROMOTION_128B = 3, 2


@functools.lru_cache(maxsize=None)
def _encode_tiled():
    f = ctypes.CDLL("libcuda.so.1").cuTensorMapEncodeTiled
    f.restype = ctypes.c_int
    return f


def tensor_map(ptr, dtype, dims, strides, box, swizzle):
    """A CUtensorMap as 128 uint8 (NumPy) over the array at device address ptr (16-byte aligned): dims and
    box innermost first, strides in bytes for dims[1:] (multiples of 16); swizzle: the 128-byte swizzle
    of attention_hopper.cu's tiles (the box's rows 128 bytes), else none. Elements outside dims read as 0."""
    rank = len(dims)
    raw = np.zeros(128 + 64, np.uint8)                      # the driver writes it 64-byte aligned
    at = raw.ctypes.data + (-raw.ctypes.data) % 64
    u64, u32 = ctypes.c_uint64 * rank, ctypes.c_uint32 * rank
    status = _encode_tiled()(ctypes.c_void_p(at), _TENSOR_MAP_TYPES[np.dtype(dtype).name], rank, ctypes.c_void_p(ptr),
                             u64(*dims), (ctypes.c_uint64 * max(1, rank - 1))(*strides), u32(*box), u32(*[1] * rank),
                             0, _SWIZZLE_128B if swizzle else 0, _L2_PROMOTION_128B, 0)
    if status != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed ({status}): dims {dims}, strides {strides}, box {box}")
    return raw[at - raw.ctypes.data:][:128].copy()


# ----------------------------------------------------------------------------------------- cuBLAS
_CUDA_R_32F, _CUDA_R_16BF = 0, 14
_CUBLAS_COMPUTE_32F = 68          # fp32 accumulation; for fp32 data, no TF32
_CUBLAS_COMPUTE_32F_FAST_TF32 = 77  # fp32 data multiplied on TF32 tensor cores, fp32 accumulation
_fp32_compute = [_CUBLAS_COMPUTE_32F]


def set_tf32(enabled):
    """fp32 products on TF32 tensor cores (llm.c's -f 1, its default for fp32 builds) or in full fp32
    (-f 0; the library's default, which matches the CPU to ~1e-5). bf16 products are unaffected."""
    _fp32_compute[0] = _CUBLAS_COMPUTE_32F_FAST_TF32 if enabled else _CUBLAS_COMPUTE_32F
_CUBLAS_GEMM_DEFAULT = -1
_OP = {False: 0, True: 1}         # CUBLAS_OP_N, CUBLAS_OP_T
_ALPHA_BETA = {}


def _alpha_beta(beta):
    """Host float32 (1, beta), kept: cuBLAS reads alpha and beta from host memory at the call."""
    key = (1.0, float(beta))
    if key not in _ALPHA_BETA:
        _ALPHA_BETA[key] = np.array(key, dtype=np.float32)
    return _ALPHA_BETA[key]


def _types(a, c):
    """(A and B's cuda data type, C's, the compute type) of a product: A and B of a's dtype, C of c's
    (the same, or float32 for a bf16 product summed in float32)."""
    bf16 = storage_is_bf16(a.dtype)
    ab_type = _CUDA_R_16BF if bf16 else _CUDA_R_32F
    c_type = _CUDA_R_16BF if storage_is_bf16(c.dtype) else _CUDA_R_32F
    return ab_type, c_type, _CUBLAS_COMPUTE_32F if bf16 else _fp32_compute[0]


def gemm(c, a, b, m, n, k, transa, transb, lda, ldb, ldc, beta=0.0):
    """cuBLAS, column-major: C (m,n) = op(A) op(B) + beta C, fp32 accumulation, A and B of a's dtype, C
    of c's. The row-major launchers in matmul.py say how their shapes map onto this."""
    cp = cupy()
    from cupy_backends.cuda.libs import cublas
    ab_type, c_type, compute = _types(a, c)
    handle = cp.cuda.device.get_cublas_handle()
    cublas.setPointerMode(handle, 0)      # CUBLAS_POINTER_MODE_HOST: alpha, beta below are host floats
    ab = _alpha_beta(beta)
    cublas.gemmEx(handle, _OP[transa], _OP[transb], m, n, k,
                  ab.ctypes.data, a.data.ptr, ab_type, lda, b.data.ptr, ab_type, ldb,
                  ab.ctypes.data + 4, c.data.ptr, c_type, ldc, compute, _CUBLAS_GEMM_DEFAULT)


# -------------------------------------------------------------------------------------- cuBLASLt
# The same column-major products through cuBLASLt, whose epilogues apply the bias, GELU (keeping its
# input) or GELU's gradient to the product on its way out: matmul_lt.py. Through nvmath-python's
# bindings, which take raw device pointers (CuPy has no cuBLASLt binding).
LT_WORKSPACE_BYTES = 32 << 20


@functools.lru_cache(maxsize=None)
def cublaslt():
    """nvmath-python's cuBLASLt module, or None where it is not installed (matmul.py's products then)."""
    try:
        from nvmath.bindings import cublasLt
    except ImportError:
        return None
    return cublasLt


@functools.lru_cache(maxsize=None)
def _lt_handle():
    return cublaslt().create()


def _lt_set(set_attribute, obj, attr, value, dtype):
    v = np.array([value], dtype=dtype)
    set_attribute(obj, attr, v.ctypes.data, v.itemsize)


@functools.lru_cache(maxsize=None)
def _lt_plan(ab_type, c_type, compute, m, n, k, transa, transb, lda, ldb, ldc, epilogue, align):
    """A matmul descriptor, the three matrix layouts and cuBLASLt's first choice of algorithm for one
    product shape (found once, kept): (desc, (a, b, c) layouts, heuristic result array)."""
    L = cublaslt()
    A = L.MatmulDescAttribute
    desc = L.matmul_desc_create(compute, _CUDA_R_32F)
    _lt_set(L.matmul_desc_set_attribute, desc, A.TRANSA, _OP[transa], np.int32)
    _lt_set(L.matmul_desc_set_attribute, desc, A.TRANSB, _OP[transb], np.int32)
    _lt_set(L.matmul_desc_set_attribute, desc, A.EPILOGUE, getattr(L.Epilogue, epilogue), np.int32)
    if epilogue in ("GELU_AUX_BIAS", "DGELU"):
        _lt_set(L.matmul_desc_set_attribute, desc, A.EPILOGUE_AUX_LD, ldc, np.int64)
    layouts = (L.matrix_layout_create(ab_type, *((k, m) if transa else (m, k)), lda),
               L.matrix_layout_create(ab_type, *((n, k) if transb else (k, n)), ldb),
               L.matrix_layout_create(c_type, m, n, ldc))
    pref = L.matmul_preference_create()
    P = L.MatmulPreferenceAttribute
    _lt_set(L.matmul_preference_set_attribute, pref, P.MAX_WORKSPACE_BYTES, LT_WORKSPACE_BYTES, np.uint64)
    for attr in (P.MIN_ALIGNMENT_A_BYTES, P.MIN_ALIGNMENT_B_BYTES, P.MIN_ALIGNMENT_C_BYTES, P.MIN_ALIGNMENT_D_BYTES):
        _lt_set(L.matmul_preference_set_attribute, pref, attr, align, np.uint32)
    found = np.zeros(1, dtype=L.matmul_heuristic_result_dtype)
    count = np.zeros(1, dtype=np.int32)
    L.matmul_algo_get_heuristic(_lt_handle(), desc, *layouts, layouts[2], pref, 1, found.ctypes.data,
                                count.ctypes.data)
    L.matmul_preference_destroy(pref)
    if count[0] == 0:
        raise RuntimeError(f"cuBLASLt has no algorithm for the product m={m} n={n} k={k} with epilogue {epilogue}")
    return desc, layouts, found


def _alignment(*arrays):
    """The largest power of two, at most 256, that divides every array's address (bytes)."""
    align = 256
    for a in arrays:
        while a.data.ptr % align:
            align //= 2
    return align


def gemm_lt(c, a, b, m, n, k, transa, transb, lda, ldb, ldc, beta=0.0, epilogue="DEFAULT", bias=None, aux=None):
    """gemm's product, C (m,n) = op(A) op(B) + beta C, through cuBLASLt with an epilogue on it:
    BIAS: + bias (m,) on every column; GELU_AUX_BIAS: aux (m,n), ld ldc, <- the product + bias, and
    C <- gelu(aux); DGELU: C <- the product * gelu'(aux). A and B of a's dtype, C of c's."""
    L = cublaslt()
    cp = cupy()
    extra = [x for x in (bias, aux) if x is not None]
    desc, layouts, algo = _lt_plan(*_types(a, c), m, n, k, transa, transb, lda, ldb, ldc, epilogue,
                                   _alignment(a, b, c, *extra))
    A = L.MatmulDescAttribute
    if bias is not None:                  # the descriptor is this shape's; the pointers are this call's
        _lt_set(L.matmul_desc_set_attribute, desc, A.BIAS_POINTER, bias.data.ptr, np.uint64)
    if aux is not None:
        _lt_set(L.matmul_desc_set_attribute, desc, A.EPILOGUE_AUX_POINTER, aux.data.ptr, np.uint64)
    ab = _alpha_beta(beta)
    workspace = scratch("cublaslt_workspace", LT_WORKSPACE_BYTES, np.uint8)
    L.matmul(_lt_handle(), desc, ab.ctypes.data, a.data.ptr, layouts[0], b.data.ptr, layouts[1],
             ab.ctypes.data + 4, c.data.ptr, layouts[2], c.data.ptr, layouts[2], algo.ctypes.data,
             workspace.data.ptr, LT_WORKSPACE_BYTES, cp.cuda.get_current_stream().ptr)


def compile_check(family, bf16, defines=(), arch=None, code=None):
    """Compile one kernel file with NVRTC to machine code for `arch` (default: the file's ARCH, else
    sm_90), no GPU needed (the CI check);
    raises RuntimeError with the compiler's log on failure. code: another file's text to compile the
    same way (dev/cuda's variants, which include llmnp/cuda's files), `family` then naming it."""
    from cupy.cuda import nvrtc
    arch = arch or ARCH.get(family, "sm_90")
    prog = nvrtc.createProgram(source(family) if code is None else code, family + ".cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}", *compile_options(bf16, defines)])
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"{family}.cu (bf16={bf16}, {dict(defines)}):\n{nvrtc.getProgramLog(prog)}") from e
        return len(nvrtc.getCUBIN(prog))
    finally:
        nvrtc.destroyProgram(prog)
