"""What every launcher shares: CuPy and the GPU found once, each .cu file compiled once per process
(per storage dtype and -D constants), argument checks, scratch buffers, and cuBLAS products.

A kernel file is compiled with NVRTC through cupy.RawModule from its own text, unchanged; the only
thing injected is -D constants (LLMNP_BF16, HS, and a hash of the shared header so CuPy's on-disk
cache notices when it changes). Not here: any kernel or layer.
"""
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


@functools.lru_cache(maxsize=None)
def _module(family, bf16, defines):
    cp = cupy()
    return cp.RawModule(code=source(family), options=compile_options(bf16, defines))


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


_scratch = {}


def scratch(name, n, dtype=np.float32):
    """A reusable device buffer of at least n elements (grown, never shrunk): the front n of it."""
    cp = cupy()
    buf = _scratch.get((name, np.dtype(dtype)))
    if buf is None or buf.size < n:
        buf = cp.empty(max(int(n), 1), dtype=dtype)
        _scratch[(name, np.dtype(dtype))] = buf
    return buf[:n]


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


def gemm(c, a, b, m, n, k, transa, transb, lda, ldb, ldc, beta=0.0):
    """cuBLAS, column-major: C (m,n) = op(A) op(B) + beta C, fp32 accumulation, data of c's dtype.
    The row-major launchers in matmul.py say how their shapes map onto this."""
    cp = cupy()
    from cupy_backends.cuda.libs import cublas
    bf16 = storage_is_bf16(c.dtype)
    dtype, compute = (_CUDA_R_16BF, _CUBLAS_COMPUTE_32F) if bf16 else (_CUDA_R_32F, _fp32_compute[0])
    handle = cp.cuda.device.get_cublas_handle()
    cublas.setPointerMode(handle, 0)      # CUBLAS_POINTER_MODE_HOST: alpha, beta below are host floats
    key = (1.0, float(beta))
    if key not in _ALPHA_BETA:
        _ALPHA_BETA[key] = np.array(key, dtype=np.float32)   # host scalars cuBLAS reads at the call
    ab = _ALPHA_BETA[key]
    cublas.gemmEx(handle, _OP[transa], _OP[transb], m, n, k,
                  ab.ctypes.data, a.data.ptr, dtype, lda, b.data.ptr, dtype, ldb,
                  ab.ctypes.data + 4, c.data.ptr, dtype, ldc, compute, _CUBLAS_GEMM_DEFAULT)


def compile_check(family, bf16, defines=(), arch="sm_90", code=None):
    """Compile one kernel file with NVRTC to machine code for `arch`, no GPU needed (the CI check);
    raises RuntimeError with the compiler's log on failure. code: another file's text to compile the
    same way (dev/cuda's variants, which include llmnp/cuda's files), `family` then naming it."""
    from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(source(family) if code is None else code, family + ".cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}", *compile_options(bf16, defines)])
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"{family}.cu (bf16={bf16}, {dict(defines)}):\n{nvrtc.getProgramLog(prog)}") from e
        return len(nvrtc.getCUBIN(prog))
    finally:
        nvrtc.destroyProgram(prog)
