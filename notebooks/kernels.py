"""What the notebooks' "On the GPU" sections share: print part of a kernel file of llmnp/cuda/, compile a
kernel file with NVRTC (CUDA's runtime compiler, which needs CuPy's NVRTC library but no GPU), and
whether a GPU is here to run the kernels. Notebook 10 reads one kernel in full; the layer notebooks
read their own kernel after simulating its loop in NumPy.

Not here: launching kernels (llmnp.cuda does that), anything a notebook computes.
"""
import os
import re

import llmnp

CUDA_DIR = os.path.join(os.path.dirname(llmnp.__file__), "cuda")


def have_gpu():
    try:
        import cupy
        return cupy.cuda.is_available()
    except Exception:            # CuPy missing, or its CUDA libraries
        return False


GPU = have_gpu()


def show(family, start, stop=None):
    """Print, with line numbers, llmnp/cuda/<family>.cu (or a file named in full: "common.cuh") from the
    first line containing `start` through the next line containing `stop` (that line alone without)."""
    name = family if "." in family else family + ".cu"
    lines = open(os.path.join(CUDA_DIR, name)).read().splitlines()
    first = next((i for i, line in enumerate(lines) if start in line), None)
    assert first is not None, f"{start!r} is no longer in {name}: this walkthrough needs updating"
    last = first if stop is None else next(i for i in range(first, len(lines)) if stop in lines[i])
    for i in range(first, last + 1):
        print(f"{i + 1:3d}  {lines[i]}")


def compile_kernels(family, **defines):
    """Compile llmnp/cuda/<family>.cu to Hopper machine code with NVRTC, as the GPU backend does at its
    first launch, and list its kernels; prints a skip note where NVRTC is missing."""
    try:
        from llmnp.cuda.runtime import compile_check
        size = compile_check(family, bf16=False, defines=tuple(sorted(defines.items())))
    except Exception as e:       # no CuPy or no NVRTC here
        print(f"skipped: cannot compile here ({type(e).__name__}: {str(e)[:120]})")
        return
    source = open(os.path.join(CUDA_DIR, family + ".cu")).read()
    names = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source)
    print(f"{family}.cu compiles with NVRTC ({size:,} bytes of sm_90 code): {', '.join(names)}")
