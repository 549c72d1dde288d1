"""Shared by the tests: `requires_gpu` skips a test where CuPy sees no CUDA GPU (CI has none)."""
import pytest


def gpu_available():
    try:
        import cupy
        return cupy.cuda.is_available()
    except Exception:          # no CuPy, no driver, no device: all mean "no GPU" here
        return False


requires_gpu = pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")
