"""The GPU backend (llmnp/cuda). Without a GPU: every .cu file compiles with NVRTC to sm_90 machine code,
in both storage modes (the CI check). With a GPU: every launcher against its NumPy reference at several
shapes, in fp32 (to ~1e-5) and bf16 (to ~1e-2), the accumulate-or-overwrite rule of each (accumulating
outputs start random, overwritten ones start NaN), then the whole model against the CPU.

Tolerances are on ||gpu - ref|| / ||ref||, the reference being the NumPy layer in float64 on the very
inputs the GPU saw (bf16-rounded where the GPU stores bf16).
"""
import glob
import os

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
from conftest import gpu_available, requires_gpu  # noqa: E402
from llmnp import layers as ref  # noqa: E402
from llmnp.cuda import runtime  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAMILIES = sorted(f[:-3] for f in os.listdir(runtime.KERNEL_DIR) if f.endswith(".cu"))


# ------------------------------------------------------------------------------------ compile (CI)
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_kernel_file_compiles(family, bf16):
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    head_sizes = (4, 16, 32, 64, 80, 96, 128) if family.startswith("attention") else (None,)
    for hs in head_sizes:
        defines = (("HS", hs),) if hs else ()
        try:
            assert runtime.compile_check(family, bf16, defines) > 0
        except (ImportError, OSError) as e:   # no NVRTC library on this machine
            pytest.skip(f"NVRTC not available: {e}")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "dev", "cuda", "*.cu"))))
def test_dev_variant_compiles(path):
    """dev/cuda's kernel variants (dev/cuda/variants.py times them against the mainline) still build."""
    pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    with open(path) as f:
        code = f.read()
    try:
        assert runtime.compile_check(os.path.basename(path)[:-3], True, (("HS", 64),), runtime.dev_arch(code),
                                     code=code) > 0
    except (ImportError, OSError) as e:   # no NVRTC library on this machine
        pytest.skip(f"NVRTC not available: {e}")


def test_no_gpu_is_a_user_error(monkeypatch):
    if gpu_available():
        pytest.skip("a GPU is present")
    from llmnp import GPT2, GPT2Config
    from llmnp.errors import UserError
    runtime.cupy.cache_clear()
    with pytest.raises(UserError, match="no CUDA GPU"):
        GPT2(GPT2Config.tiny(), device="cuda")


# --------------------------------------------------------------------------------------- helpers
DTYPES = ["float32", "bfloat16"]
TOL = {"float32": 2e-5, "bfloat16": 1.5e-2}


def dtype_of(name):
    from llmnp.model import storage_dtype
    return storage_dtype(name)


class Case:
    """Random inputs for one dtype: each array exists on the GPU (storage dtype) and on the host as the
    float64 copy of exactly those values."""

    def __init__(self, dtype, seed=0):
        self.dtype = dtype_of(dtype)
        self.tol = TOL[dtype]
        self.rng = np.random.default_rng(seed)

    def dev(self, a, dtype=None):
        return cp.asarray(np.asarray(a).astype(dtype or self.dtype))

    def randn(self, *shape, scale=1.0, dtype=None):
        """(device array, float64 host copy of its values)"""
        d = self.dev(self.rng.standard_normal(shape) * scale, dtype)
        return d, host(d)

    def nan(self, *shape, dtype=None):
        return self.dev(np.full(shape, np.nan), dtype)

    def close(self, got, want, what, tol=None):
        got = host(got)
        want = np.asarray(want, dtype=np.float64)
        assert got.shape == want.shape, what
        assert np.all(np.isfinite(got)), f"{what}: non-finite values (unwritten?)"
        err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
        assert err < (tol or self.tol), f"{what}: relative error {err:.3g}"


def host(a):
    return cp.asnumpy(a).astype(np.float64)


# ---------------------------------------------------------------------------------------- layers
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,C,V", [(2, 5, 8, 16), (4, 64, 768, 512), (3, 7, 20, 30)])
def test_encoder(dtype, B, T, C, V):
    from llmnp.cuda import encoder_backward, encoder_forward
    k = Case(dtype)
    inp = k.rng.integers(0, min(V, 10), size=(B, T)).astype(np.int32)   # repeated tokens
    wte, wte_h = k.randn(V, C)
    wpe, wpe_h = k.randn(T + 3, C)
    out = k.nan(B, T, C)
    encoder_forward(out, cp.asarray(inp), wte, wpe)
    want = np.empty((B, T, C))
    ref.encoder_forward(want, inp, wte_h, wpe_h)
    k.close(out, want, "encoder out")
    dout, dout_h = k.randn(B, T, C)
    dwte, dwte_h = k.randn(V, C)
    dwpe, dwpe_h = k.randn(T + 3, C)
    encoder_backward(dwte, dwpe, dout, cp.asarray(inp))
    ref.encoder_backward(dwte_h, dwpe_h, dout_h, inp)
    k.close(dwte, dwte_h, "dwte")
    k.close(dwpe, dwpe_h, "dwpe")


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,C", [(2, 3, 8), (4, 64, 768), (3, 7, 100)])
def test_layernorm(dtype, B, T, C):
    from llmnp.cuda import layernorm_backward, layernorm_forward
    k = Case(dtype)
    inp, inp_h = k.randn(B, T, C, scale=3.0)
    w, w_h = k.randn(C)
    b, b_h = k.randn(C)
    out, mean, rstd = k.nan(B, T, C), k.nan(B, T, dtype=np.float32), k.nan(B, T, dtype=np.float32)
    layernorm_forward(out, mean, rstd, inp, w, b)
    want, m_h, r_h = np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))
    ref.layernorm_forward(want, m_h, r_h, inp_h, w_h, b_h)
    k.close(out, want, "ln out")
    k.close(mean, m_h, "mean", tol=1e-5)
    k.close(rstd, r_h, "rstd", tol=1e-5)
    dout, dout_h = k.randn(B, T, C)
    dinp, dinp_h = k.randn(B, T, C)
    dw, dw_h = k.randn(C)
    db, db_h = k.randn(C)
    layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd)
    ref.layernorm_backward(dinp_h, dw_h, db_h, dout_h, inp_h, w_h, m_h, r_h)
    k.close(dinp, dinp_h, "dinp")
    k.close(dw, dw_h, "dweight")
    k.close(db, db_h, "dbias")
    dpb, dpb_h = k.randn(C)                                 # accumulates the rows of dinp as written
    before = host(dinp)
    layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, dproj_bias=dpb)
    k.close(dpb, dpb_h + host(dinp).reshape(-1, C).sum(axis=0), "dproj_bias")
    ref.layernorm_backward(before, dw_h, db_h, dout_h, inp_h, w_h, m_h, r_h)
    k.close(dinp, before, "dinp, with dproj_bias")
    k.close(dw, dw_h, "dweight, with dproj_bias")
    k.close(db, db_h, "dbias, with dproj_bias")


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,C", [(2, 3, 8), (4, 64, 768), (3, 7, 100)])
def test_residual_layernorm(dtype, B, T, C):
    """The fused kernel against its composition: the residual against inp + proj + proj_bias in float64,
    the layernorm against the NumPy layernorm of the residual the GPU stored; in place, as the model."""
    from llmnp.cuda import residual_layernorm_forward
    k = Case(dtype)
    inp, inp_h = k.randn(B, T, C, scale=3.0)
    proj, proj_h = k.randn(B, T, C)
    pb, pb_h = k.randn(C)
    w, w_h = k.randn(C)
    b, b_h = k.randn(C)
    out, mean, rstd = k.nan(B, T, C), k.nan(B, T, dtype=np.float32), k.nan(B, T, dtype=np.float32)
    residual_layernorm_forward(proj, out, mean, rstd, inp, proj, pb, w, b)     # residual written over proj
    k.close(proj, inp_h + proj_h + pb_h, "residual")
    want, m_h, r_h = np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))
    ref.layernorm_forward(want, m_h, r_h, host(proj), w_h, b_h)
    k.close(out, want, "ln out")
    k.close(mean, m_h, "mean", tol=1e-5)
    k.close(rstd, r_h, "rstd", tol=1e-5)


def products(name):
    """llmnp/cuda's matmul launchers: the plain ones (matmul.py, cuBLAS and kernels) or the cuBLASLt
    epilogue ones (matmul_lt.py, where nvmath-python is installed); each is tested on its own."""
    if name == "matmul_lt" and runtime.cublaslt() is None:
        pytest.skip("nvmath-python (cuBLASLt) is not installed")
    import importlib
    return importlib.import_module(f"llmnp.cuda.{name}")


PRODUCTS = ["matmul", "matmul_lt"]


@requires_gpu
@pytest.mark.parametrize("module", PRODUCTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,C,OC,bias", [(2, 5, 8, 24, True), (4, 64, 768, 2304, True), (3, 7, 20, 50, True),
                                            (2, 64, 64, 512, False)])
def test_matmul(module, dtype, B, T, C, OC, bias):
    m = products(module)
    matmul_forward, matmul_backward = m.matmul_forward, m.matmul_backward
    k = Case(dtype)
    inp, inp_h = k.randn(B, T, C)
    w, w_h = k.randn(OC, C, scale=C ** -0.5)
    b, b_h = k.randn(OC) if bias else (None, None)
    out = k.nan(B, T, OC)
    matmul_forward(out, inp, w, b)
    want = np.empty((B, T, OC))
    ref.matmul_forward(want, inp_h, w_h, b_h)
    k.close(out, want, "matmul out")
    dout, dout_h = k.randn(B, T, OC)
    dinp = k.nan(B, T, C)
    dw, dw_h = k.randn(OC, C)
    db, db_h = k.randn(OC) if bias else (None, None)
    matmul_backward(dinp, dw, db, dout, inp, w)
    dinp_h = np.empty((B, T, C))
    ref.matmul_backward(dinp_h, dw_h, db_h, dout_h, inp_h, w_h)
    k.close(dinp, dinp_h, "dinp")
    k.close(dw, dw_h, "dweight")
    if bias:
        k.close(db, db_h, "dbias")


def attention_cases():
    for dtype in DTYPES:
        for B, T, NH, hs in [(2, 5, 2, 4), (2, 64, 2, 64), (1, 65, 2, 64), (1, 100, 3, 64), (2, 129, 2, 64),
                             (1, 192, 2, 64), (2, 200, 4, 32), (1, 1024, 2, 64),
                             (2, 33, 2, 16), (2, 130, 2, 80), (1, 200, 2, 96), (2, 150, 2, 128)]:   # GPT-3's sizes
            tensor_cores = dtype == "bfloat16" and hs % 16 == 0
            for kernels in ["fp32"] + (["mma"] if tensor_cores else []) + (["wgmma"] if tensor_cores and hs == 64 else []):
                yield dtype, B, T, NH, hs, kernels


@pytest.mark.parametrize("on_hopper", [False, True])
def test_attention_kernel_choice(monkeypatch, on_hopper):
    """kernels_for picks wgmma only on Hopper at head size 64 and aligned bf16 rows; a forced set that
    cannot run is refused by name (no GPU needed: the arrays only show their addresses)."""
    from types import SimpleNamespace

    from llmnp.cuda import attention
    from llmnp.model import storage_dtype
    monkeypatch.setattr(attention, "hopper", lambda: on_hopper)
    bf16, aligned, odd = storage_dtype("bfloat16"), SimpleNamespace(data=SimpleNamespace(ptr=256)), \
        SimpleNamespace(data=SimpleNamespace(ptr=258))
    assert attention.kernels_for(bf16, 64, aligned) == ("wgmma" if on_hopper else "mma")
    assert attention.kernels_for(bf16, 128, aligned) == "mma"
    assert attention.kernels_for(bf16, 64, aligned, odd) == "fp32"
    assert attention.kernels_for(bf16, 72, aligned) == "fp32"
    assert attention.kernels_for(np.float32, 64, aligned) == "fp32"
    assert attention.chosen(None, bf16, 64, aligned) == attention.kernels_for(bf16, 64, aligned)
    assert attention.chosen("fp32", bf16, 64, aligned) == "fp32"
    assert attention.chosen("mma", bf16, 64, aligned) == "mma"
    with pytest.raises(ValueError, match="'mma' attention kernels cannot run float32"):
        attention.chosen("mma", np.float32, 64, aligned)
    with pytest.raises(ValueError, match="'tensor' attention kernels"):
        attention.chosen("tensor", bf16, 64, aligned)
    if on_hopper:
        assert attention.chosen("wgmma", bf16, 64, aligned) == "wgmma"
    with pytest.raises(ValueError, match="'wgmma' attention kernels cannot run bfloat16 storage with head size 128"):
        attention.chosen("wgmma", bf16, 128, aligned)


@requires_gpu
@pytest.mark.parametrize("dtype,B,T,NH,hs,kernels", list(attention_cases()))
def test_attention(dtype, B, T, NH, hs, kernels):
    """Each set of kernels (attention.py kernels_for) against NumPy; the Hopper ones only on Hopper."""
    from llmnp.cuda.attention import attention_backward, attention_forward
    if kernels == "wgmma" and not runtime.hopper():
        pytest.skip("the wgmma kernels run on compute capability 9.0 only")
    k = Case(dtype)
    C = NH * hs
    qkv, qkv_h = k.randn(B, T, 3 * C)
    out, lse = k.nan(B, T, C), k.nan(B, NH, T, dtype=np.float32)
    attention_forward(out, lse, qkv, kernels=kernels)
    want, lse_h = np.empty((B, T, C)), np.empty((B, NH, T))
    ref.attention_forward(want, lse_h, qkv_h)
    k.close(out, want, "att out")
    k.close(lse, lse_h, "lse", tol=1e-5 if dtype == "float32" else 2e-3)
    dout, dout_h = k.randn(B, T, C)
    dqkv = k.nan(B, T, 3 * C)
    attention_backward(dqkv, dout, qkv, out, lse, kernels=kernels)
    dqkv_h = np.empty((B, T, 3 * C))
    ref.attention_backward(dqkv_h, dout_h, qkv_h, host(out), host(lse))   # from the GPU's own saved out/lse
    for i, name in enumerate("qkv"):
        k.close(dqkv[..., i * C:(i + 1) * C], dqkv_h[..., i * C:(i + 1) * C], "d" + name)
    dbias, dbias_h = k.randn(3 * C)                        # accumulates the rows of dqkv as stored
    attention_backward(dqkv, dout, qkv, out, lse, kernels=kernels, dqkv_bias=dbias)
    stored = host(dqkv).reshape(-1, 3 * C).sum(axis=0)
    for i, name in enumerate("qkv"):
        k.close(dbias[i * C:(i + 1) * C], dbias_h[i * C:(i + 1) * C] + stored[i * C:(i + 1) * C], f"d{name} bias")


@requires_gpu
@pytest.mark.parametrize("T", [100, 131])
def test_attention_backward_lse_anywhere(T):
    """The tensor-core backwards read lse wherever it lies: from 4 bytes past a 16-byte boundary inside a
    larger buffer whose other floats are NaN, with rows of T floats (not a multiple of 16 bytes at T = 131;
    the Hopper kernel's tensor copies need 16-byte rows, so rowdot copies lse), they give the same dqkv as
    from a fresh lse, bit for bit."""
    from llmnp.cuda.attention import attention_backward, attention_forward
    k = Case("bfloat16")
    B, NH, hs = 2, 3, 64
    C = NH * hs
    qkv, _ = k.randn(B, T, 3 * C)
    dout, _ = k.randn(B, T, C)
    out, lse = k.nan(B, T, C), k.nan(B, NH, T, dtype=np.float32)
    attention_forward(out, lse, qkv)
    around = k.nan(B * NH * T + 8, dtype=np.float32)
    inside = around[1:1 + B * NH * T].reshape(B, NH, T)
    inside[...] = lse
    for kernels in ["mma"] + (["wgmma"] if runtime.hopper() else []):
        dqkv, dqkv_inside = k.nan(B, T, 3 * C), k.nan(B, T, 3 * C)
        attention_backward(dqkv, dout, qkv, out, lse, kernels=kernels)
        attention_backward(dqkv_inside, dout, qkv, out, inside, kernels=kernels)
        assert bool(cp.isfinite(dqkv_inside.astype(np.float32)).all()), kernels
        assert bool((dqkv_inside == dqkv).all()), kernels


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (4, 64, 3072), (3, 5, 13)])
def test_gelu_and_residual(dtype, shape):
    from llmnp.cuda import gelu_backward, gelu_forward, residual_backward, residual_forward
    k = Case(dtype)
    x, x_h = k.randn(*shape, scale=2.0)
    out = k.nan(*shape)
    gelu_forward(out, x)
    want = np.empty(shape)
    ref.gelu_forward(want, x_h)
    k.close(out, want, "gelu out")
    dout, dout_h = k.randn(*shape)
    dinp = k.nan(*shape)
    gelu_backward(dinp, x, dout)
    want = np.empty(shape)
    ref.gelu_backward(want, x_h, dout_h)
    k.close(dinp, want, "gelu dinp")

    y, y_h = k.randn(*shape)
    out = k.nan(*shape)
    residual_forward(out, x, y)
    k.close(out, x_h + y_h, "residual out")
    residual_forward(y, x, y)                              # in place, as the model calls it
    k.close(y, x_h + y_h, "residual in place")
    d1, d1_h = k.randn(*shape)
    d2, d2_h = k.randn(*shape)
    residual_backward(d1, d2, dout)
    ref.residual_backward(d1_h, d2_h, dout_h)
    k.close(d1, d1_h, "dinp1")
    k.close(d2, d2_h, "dinp2")


@requires_gpu
@pytest.mark.parametrize("module", PRODUCTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,OC", [(256, 768, 3072), (15, 24, 96), (600, 40, 160)])
def test_matmul_gelu(module, dtype, N, C, OC):
    """The fc layer and the backward through its GELU, against the composition of NumPy references:
    pre_gelu = matmul_forward with the bias, out = gelu_forward(pre_gelu); dinp = the product
    dout @ weight through gelu_backward at pre_gelu; dweight and dbias as matmul_backward's."""
    m = products(module)
    k = Case(dtype)
    inp, inp_h = k.randn(N, C)
    w, w_h = k.randn(OC, C, scale=C ** -0.5)
    b, b_h = k.randn(OC)
    out, pre = k.nan(N, OC), k.nan(N, OC)
    m.matmul_gelu_forward(out, pre, inp, w, b)
    pre_h, out_h = np.empty((N, OC)), np.empty((N, OC))
    ref.matmul_forward(pre_h, inp_h, w_h, b_h)
    ref.gelu_forward(out_h, pre_h)
    k.close(pre, pre_h, "pre_gelu")
    k.close(out, out_h, "gelu out")
    # the layer after GELU (fcproj): its inp is out = gelu(pre), its dinp goes through GELU to pre
    wp, wp_h = k.randn(C, OC, scale=OC ** -0.5)
    dout, dout_h = k.randn(N, C)
    dinp = k.nan(N, OC)
    dw, dw_h = k.randn(C, OC)
    db, db_h = k.randn(C)
    m.matmul_backward(dinp, dw, db, dout, out, wp, pre)
    pre_h, out_h = host(pre), host(out)                    # the GPU's own saved tensors, as stored
    dgelu_h, dinp_h = np.empty((N, OC)), np.empty((N, OC))
    ref.matmul_backward(dgelu_h, dw_h, db_h, dout_h, out_h, wp_h)
    ref.gelu_backward(dinp_h, pre_h, dgelu_h)
    k.close(dinp, dinp_h, "dinp through gelu")
    k.close(dw, dw_h, "dweight")
    k.close(db, db_h, "dbias")


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,V,Vp", [(2, 5, 11, 16), (4, 3, 50257, 50304), (1, 4, 90, 100)])
def test_classifier(dtype, B, T, V, Vp):
    """softmax against the NumPy softmax; the fused loss and backward against the composition of NumPy
    references: -log of the reference softmax at the target, (reference softmax - onehot) * dloss."""
    from llmnp.cuda import crossentropy_forward, crossentropy_softmax_backward, softmax_forward
    k = Case(dtype)
    z = k.rng.standard_normal((B, T, Vp)) * 3.0
    z[..., V:] += 50.0                                     # padding: would dominate if it counted
    logits = k.dev(z)
    logits_h = host(logits)
    targets = k.rng.integers(0, V, size=(B, T)).astype(np.int32)
    b, t = np.meshgrid(np.arange(B), np.arange(T), indexing="ij")
    probs_h = np.empty((B, T, Vp))
    ref.softmax_forward(probs_h, logits_h, V)
    probs = k.nan(B, T, Vp)
    softmax_forward(probs, logits, V)
    k.close(probs, probs_h, "probs")

    losses, lse = k.nan(B, T, dtype=np.float32), k.nan(B, T, dtype=np.float32)
    crossentropy_forward(losses, lse, logits, cp.asarray(targets), V)
    k.close(losses, -np.log(probs_h[b, t, targets]), "losses", tol=1e-6)
    x = logits_h[..., :V]
    k.close(lse, np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1), "lse", tol=1e-6)
    np.testing.assert_array_equal(host(logits), logits_h)          # the loss only reads the logits

    dloss = 1.0 / (B * T * 2)
    onehot = np.zeros((B, T, Vp))
    onehot[b, t, targets] = 1.0
    want = (probs_h - onehot) * dloss
    dlogits = k.nan(B, T, Vp)
    crossentropy_softmax_backward(dlogits, logits, lse, cp.asarray(targets), dloss, V)
    k.close(dlogits, want, "dlogits")
    assert not cp.any(dlogits[..., V:]), "padded columns of dlogits must be 0"
    crossentropy_softmax_backward(logits, logits, lse, cp.asarray(targets), dloss, V)   # in place, as the model
    k.close(logits, want, "dlogits over the logits")


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V,Vp", [(10, 11, 16), (12, 50257, 50304), (300, 50257, 50304), (4, 90, 100),
                                    (700, 90, 100)])
@pytest.mark.parametrize("cached", [True, False])
def test_crossentropy_forward_backward(monkeypatch, dtype, N, V, Vp, cached):
    """The loss and dlogits in one kernel, against the NumPy softmax: -log softmax at the target and
    (softmax - onehot) * dloss, on (N,) rows as the model's blocks pass them (N past the grid's blocks:
    a block takes several rows); with the row kept in shared memory and (the limit set below a row)
    read from device memory; written over the logits."""
    from llmnp.cuda import classifier
    row = Vp * dtype_of(dtype).itemsize
    if cached and not classifier.fits_in_shared(row):
        pytest.skip(f"a row of {Vp} {dtype} does not fit in this GPU's shared memory")
    monkeypatch.setattr(classifier, "max_shared", lambda: row + 1024 - (0 if cached else 1))
    k = Case(dtype)
    z = k.rng.standard_normal((N, Vp)) * 3.0
    z[:, V:] += 50.0                                       # padding: would dominate if it counted
    logits = k.dev(z)
    logits_h = host(logits)
    targets = k.rng.integers(0, V, size=N).astype(np.int32)
    targets[0] = V - 1                                     # the last real column
    probs_h = np.empty((N, Vp))
    ref.softmax_forward(probs_h, logits_h, V)
    dloss = 1.0 / (N * 3)
    onehot = np.zeros((N, Vp))
    onehot[np.arange(N), targets] = 1.0
    losses, dlogits = k.nan(N, dtype=np.float32), k.nan(N, Vp)
    classifier.crossentropy_forward_backward(losses, dlogits, logits, cp.asarray(targets), dloss, V)
    k.close(losses, -np.log(probs_h[np.arange(N), targets]), "losses", tol=1e-6)
    k.close(dlogits, (probs_h - onehot) * dloss, "dlogits")
    assert not cp.any(dlogits[:, V:]), "padded columns of dlogits must be 0"
    np.testing.assert_array_equal(host(logits), logits_h)          # not in place: the logits only read
    losses2 = k.nan(N, dtype=np.float32)
    classifier.crossentropy_forward_backward(losses2, logits, logits, cp.asarray(targets), dloss, V)
    np.testing.assert_array_equal(host(losses2), host(losses))
    np.testing.assert_array_equal(host(logits), host(dlogits))     # in place: the same numbers


@requires_gpu
@pytest.mark.parametrize("module", PRODUCTS)
@pytest.mark.parametrize("N,C,OC", [(64, 32, 48), (300, 24, 100)])
def test_matmul_backward_into_float32(module, N, C, OC):
    """A bf16 product's weight gradient summed into a float32 dweight (the classifier's blocks), then
    add_into a bf16 gradient: against float64 NumPy of the same bf16 values."""
    from llmnp.cuda import add_into
    m = products(module)
    k = Case("bfloat16")
    inp, inp_h = k.randn(N, C)
    w, w_h = k.randn(OC, C)
    dout, dout_h = k.randn(N, OC)
    dw32, dw32_h = k.randn(OC, C, dtype=np.float32)
    m.matmul_backward(None, dw32, None, dout, inp, w)
    assert dw32.dtype == np.float32
    k.close(dw32, dw32_h + dout_h.T @ inp_h, "float32 dweight", tol=1e-6)
    grad, grad_h = k.randn(OC, C)
    add_into(grad, dw32)
    k.close(grad, grad_h + host(dw32), "add_into", tol=1e-2)
    with pytest.raises(TypeError, match="dweight"):
        m.matmul_backward(None, cp.zeros((OC, C), np.float64), None, dout, inp, w)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 1000, 1 << 20])
def test_adamw_and_global_norm(dtype, n):
    from llmnp.cuda import adamw_update, global_norm_squared
    k = Case(dtype)
    grads, g_h = k.randn(n, scale=0.1)
    m, m_h = k.randn(n, scale=0.01, dtype=np.float32)
    v_d = k.dev(k.rng.random(n) * 1e-3, np.float32)
    v_h = host(v_d)
    master_h = k.rng.standard_normal(n).astype(np.float32).astype(np.float64)
    if dtype == "float32":
        params, master = k.dev(master_h), None
    else:
        params, master = k.dev(master_h), k.dev(master_h, np.float32)
    for t in (1, 2):
        adamw_update(params, grads, m, v_d, 1e-3, 0.9, 0.95, 1e-8, 0.1, t, grad_scale=0.5, master=master)
        ref.adamw_update(master_h, g_h, m_h, v_h, 1e-3, 0.9, 0.95, 1e-8, 0.1, t, grad_scale=0.5)
    k.close(m, m_h, "m", tol=1e-5)
    k.close(v_d, v_h, "v", tol=1e-5)
    if master is not None:
        k.close(master, master_h, "master", tol=1e-6)
        # bf16 params: the GPU's own master weights rounded stochastically, bit for bit as the reference
        from llmnp.adamw import stochastic_round_bf16
        want = stochastic_round_bf16(master.get(), seed=0, offset=0)
        assert np.array_equal(params.get().view(np.uint16), want.view(np.uint16))
    else:
        k.close(params, master_h, "params", tol=1e-6)
    got = float(global_norm_squared(grads))
    want = ref.global_norm_squared(g_h)
    assert abs(got - want) <= 1e-5 * want, (got, want)


# ------------------------------------------------------------------------------------ the model
def _batch(config, B, T, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=(B, T + 1)).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


SMALL = dict(max_seq_len=64, vocab_size=500, padded_vocab_size=512, num_layers=2, num_heads=2, channels=128)


def _step(model, x, y):
    loss = float(model.forward(x, y))
    model.zero_grad()
    model.backward()
    return loss


@requires_gpu
def test_model_fp32_matches_cpu():
    """Logits, loss and all 16 gradients at init-like weights, then 10 AdamW steps (llm.c's test_gpt2)."""
    from llmnp import GPT2, GPT2Config
    from llmnp.params import PARAMETER_NAMES
    config = GPT2Config(**SMALL)
    x, y = _batch(config, B=4, T=64)
    cpu, gpu_model = GPT2(config, seed=3), GPT2(config, device="cuda", seed=3)
    lc, lg = float(cpu.forward(x, y)), float(gpu_model.forward(x, y))
    print(f"fp32 GPU vs CPU: loss {lg:.6f} vs {lc:.6f}")
    assert abs(lc - lg) < 1e-5, (lc, lg)
    z = host(gpu_model.logits)                            # before backward writes dlogits over them
    print(f"logits maxdiff {np.max(np.abs(z - cpu.logits)):.3g} (max |logit| {np.max(np.abs(cpu.logits)):.3g})")
    assert np.max(np.abs(z - cpu.logits)) < 1e-5 * max(1.0, np.max(np.abs(cpu.logits)))
    for model in (cpu, gpu_model):
        model.zero_grad()
        model.backward()
    for name in PARAMETER_NAMES:
        want, got = cpu.grads[name], host(gpu_model.grads[name])
        maxdiff = np.max(np.abs(got - want))
        print(f"{name:9s} OK, maxdiff {maxdiff:.3g} = {maxdiff / np.max(np.abs(want)):.2g} of max |grad|")
        assert maxdiff <= 2e-5 * np.max(np.abs(want)), f"{name}: maxdiff {maxdiff:.3g} of max {np.max(np.abs(want)):.3g}"
    losses = {}
    for name, model in (("cpu", cpu), ("gpu", gpu_model)):
        losses[name] = []
        for t in range(1, 11):
            losses[name].append(_step(model, x, y))
            norm = model.grad_norm()
            model.update(1e-4, 0.9, 0.95, 1e-8, 0.0, t, grad_scale=min(1.0, 1.0 / norm))
    print("10 AdamW steps, losses GPU:", " ".join(f"{v:.6f}" for v in losses["gpu"]))
    print("                       CPU:", " ".join(f"{v:.6f}" for v in losses["cpu"]))
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-4)
    assert losses["gpu"][-1] < losses["gpu"][0] - 0.5


@requires_gpu
def test_model_bf16_close_to_cpu_and_learns():
    from llmnp import GPT2, GPT2Config
    from llmnp.params import PARAMETER_NAMES
    config = GPT2Config(**SMALL)
    x, y = _batch(config, B=4, T=64)
    cpu, bf = GPT2(config, seed=3), GPT2(config, device="cuda", dtype="bfloat16", seed=3)
    assert bf.params_memory.dtype.name == "bfloat16" and bf.master_memory.dtype == np.float32
    np.testing.assert_array_equal(bf.parameters_to_host(), cpu.params_memory)     # master = the fp32 init
    lc, lb = _step(cpu, x, y), _step(bf, x, y)
    print(f"bf16 GPU vs fp32 CPU: loss {lb:.6f} vs {lc:.6f}")
    assert abs(lc - lb) < 0.02, (lc, lb)
    for name in PARAMETER_NAMES:
        want, got = cpu.grads[name], host(bf.grads[name])
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        print(f"{name:9s} |g_bf16 - g_fp32| / |g_fp32| = {err:.3g}")
        assert err < 0.05, f"{name}: relative error {err:.3g}"
    first = lb
    for t in range(1, 31):
        loss = _step(bf, x, y)
        bf.update(1e-3, 0.9, 0.95, 1e-8, 0.0, t, grad_scale=min(1.0, 1.0 / bf.grad_norm()))
    print(f"bf16 overfitting one batch: loss {first:.3f} -> {loss:.3f} in 30 steps")
    assert loss < first - 2.0, (first, loss)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_model_forward_backward_in_blocks_matches_forward_then_backward(dtype):
    """forward_backward (the classifier in blocks of 100 rows of 4*64, the fused loss kernel, the float32
    sum of wte's gradient) against forward + backward on the same GPU model; validate's loss and
    per-position losses against forward's."""
    from llmnp import GPT2, GPT2Config
    from llmnp.params import PARAMETER_NAMES
    config = GPT2Config(**SMALL)
    x, y = _batch(config, B=4, T=64)
    whole, blocks = (GPT2(config, device="cuda", dtype=dtype, seed=3) for _ in range(2))
    blocks.classifier_rows = 100
    lw = _step(whole, x, y)
    losses_w = host(whole.acts["losses"])
    blocks.zero_grad()
    lb = float(blocks.forward_backward(x, y))
    assert abs(lw - lb) < 1e-5, (lw, lb)
    for name in PARAMETER_NAMES:
        want, got = host(whole.grads[name]), host(blocks.grads[name])
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < (1e-6 if dtype == "float32" else 1e-2), f"{name}: relative error {err:.3g}"
    before = host(blocks.grads_memory)
    assert abs(float(blocks.validate(x, y)) - lw) < 1e-5
    k = Case(dtype)
    k.close(blocks.acts["losses"], losses_w, "validate's losses", tol=1e-6)
    np.testing.assert_array_equal(host(blocks.grads_memory), before)


@requires_gpu
def test_model_gpu_buffers_stay_on_the_gpu():
    from llmnp import GPT2, GPT2Config
    config = GPT2Config(**SMALL)
    model = GPT2(config, device="cuda", dtype="bfloat16")
    x, y = _batch(config, B=2, T=32)
    loss = model.forward(x, y)
    assert isinstance(loss, cp.ndarray) and loss.dtype == np.float32
    model.zero_grad()
    model.backward()
    model.update(1e-3, 0.9, 0.95, 1e-8, 0.1, 1)
    for a in (model.params_memory, model.grads_memory, model.m_memory, model.v_memory, model.master_memory,
              model.acts_memory, model.stats_memory, model.dacts_memory):
        assert isinstance(a, cp.ndarray)
    assert model.m_memory.dtype == model.stats_memory.dtype == np.float32
