"""Every kernel a launcher names is defined in a .cu file, and every kernel defined is launched: a
renamed or misspelled kernel fails here, on a machine without a GPU, not at its first launch."""
import glob
import os
import re

CUDA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "llmnp", "cuda")
DEFINED = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\)\s+)?(\w+)\(')
# a kernel's name in a launcher: kernel("family", "name"), tensor_core_kernel("name", ...), or a loop over names
NAMED = re.compile(r'(?:kernel\("\w+", |tensor_core_kernel\(|for name in \()"(\w+)"(?:, "(\w+)")?')


def test_launchers_and_kernels_name_the_same_kernels():
    defined = {name for cu in glob.glob(os.path.join(CUDA, "*.cu")) for name in DEFINED.findall(open(cu).read())}
    named = {name for py in glob.glob(os.path.join(CUDA, "*.py"))
             for names in NAMED.findall(open(py).read()) for name in names if name}
    assert named - defined == set(), "launched but not defined"
    assert defined - named == set(), "defined but never launched"
