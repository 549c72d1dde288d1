"""llm.c's training flags beyond the basic ones: outlier skipping (-sl/-sg), major checkpoints (-nm),
recompute 2 (-r 2), no master weights (-w 0), TF32 (-f), GPU logging (-lg), GELU fusion (-ge), the
gpt3:cN / gpt2:dN descriptors, and processes started without mpiexec (-pn -pr -pg -pi -pf -ps)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import train_gpt2
from conftest import requires_gpu
from llmnp import GPT2, GPT2Config
from llmnp.checkpoint import load_model, load_state
from llmnp.errors import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fails(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(train_gpt2.main, argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert e.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- descriptors
@pytest.mark.parametrize("name, shape", [
    ("gpt3:c384", (6, 6, 384, 2048)),         # (L, NH, C, maxT): head size 64
    ("gpt3:c768", (12, 12, 768, 2048)),
    ("gpt3:c1536", (24, 16, 1536, 2048)),     # head size 96
    ("gpt3:c2048", (24, 16, 2048, 2048)),     # head size 128
    ("gpt3:c2560", (32, 32, 2560, 2048)),     # head size 80
    ("gpt2:d24", (24, 16, 1024, 1024)),
    ("d48", (48, 25, 1600, 1024)),
    ("d60", (60, 30, 1920, 1024)),            # llm.c's unofficial sizes
    ("d84", (84, 36, 3456, 1024)),
    ("d3", (3, 3, 192, 1024)),                # llmnp's small-experiment rule, C = 64N
])
def test_descriptors_build_llmcs_shapes(name, shape):
    c = GPT2Config.preset(name)
    assert (c.num_layers, c.num_heads, c.channels, c.max_seq_len) == shape


@pytest.mark.parametrize("name, words", [("gpt3:c1000", "unknown GPT-3 width"),
                                         ("gpt3:c5140", "do not split into heads of 128"),
                                         ("gpt4", "unknown model descriptor")])
def test_bad_descriptors_are_one_line(tiny_run, capsys, name, words):
    assert words in fails(tiny_run[2:] + ["-e", name, "-x", "1"], capsys)


def test_the_smallest_gpt3_trains(tiny_run, capsys):
    assert train_gpt2.main(tiny_run[2:] + ["-e", "gpt3:c384", "-b", "1", "-x", "1", "-v", "0", "-s", "0"]) == 0
    out = capsys.readouterr().out
    assert "L=6 NH=6 C=384 maxT=2048" in out and "step    1/1" in out


# ------------------------------------------------------------------------------- -sl / -sg
def test_a_loss_spike_skips_the_update(tiny_run, tmp_path, capsys, monkeypatch):
    """130 steps fill the 128-step window; at the last one the loss is planted 100x too high. With
    -sl 3 that step is logged as skipped and the weights and AdamW state stay as they were."""
    real = train_gpt2.forward_backward
    calls = []

    def spiky(*a):
        loss, norm, batches = real(*a)
        calls.append(1)
        return (loss * 100 if len(calls) == 130 else loss), norm, batches
    monkeypatch.setattr(train_gpt2, "forward_backward", spiky)
    out_dir = tmp_path / "run"
    assert train_gpt2.main(tiny_run + ["-x", "130", "-n", "129", "-sl", "3", "-v", "0", "-s", "0",
                                       "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipping update due to loss z-score of") == 1
    before, after = (load_model(str(out_dir / f"model_{s:08d}.bin"))[1] for s in (129, 130))
    assert np.array_equal(before, after)
    sb, sa = (load_state(str(out_dir / f"state_{s:08d}_00000.bin")) for s in (129, 130))
    assert np.array_equal(sb["m"], sa["m"]) and np.array_equal(sb["v"], sa["v"])


def test_a_norm_spike_skips_the_update(tiny_run, capsys, monkeypatch):
    real = train_gpt2.forward_backward
    calls = []

    def spiky(*a):
        loss, norm, batches = real(*a)
        calls.append(1)
        return loss, (norm * 1000 if len(calls) == 130 else norm), batches
    monkeypatch.setattr(train_gpt2, "forward_backward", spiky)
    assert train_gpt2.main(tiny_run + ["-x", "130", "-sg", "5", "-v", "0", "-s", "0"]) == 0
    assert capsys.readouterr().out.count("skipping update due to grad z-score of") == 1


# ------------------------------------------------------------------------------------- -nm
def test_major_checkpoints_survive_nk(tiny_run, tmp_path):
    out = tmp_path / "run"
    assert train_gpt2.main(tiny_run + ["-x", "7", "-n", "1", "-nk", "2", "-nm", "3", "-v", "0", "-s", "0",
                                       "-o", str(out)]) == 0
    kept = sorted(int(f[5:]) for f in os.listdir(out) if f.startswith("DONE_"))
    assert kept == [3, 6, 7]
    assert sorted(f for f in os.listdir(out) if f.startswith("model_")) == [f"model_{s:08d}.bin" for s in kept]


# ------------------------------------------------------------------------------------- -r 2
def test_recompute_2_trains_like_recompute_1(tiny_run, capsys):
    logs = []
    for r in ("1", "2"):
        assert train_gpt2.main(tiny_run + ["-x", "3", "-r", r, "-v", "0", "-s", "0"]) == 0
        logs.append([l.split("|")[1] for l in capsys.readouterr().out.splitlines() if l.startswith("step ")])
    assert logs[0] == logs[1]


# ----------------------------------------------------------------------- -w, -f, -ge, -lg on the CPU
def test_flags_that_change_nothing_here_say_so(tiny_run, capsys):
    assert train_gpt2.main(tiny_run + ["-x", "1", "-w", "0", "-ge", "1", "-f", "0", "-lg", "1", "-v", "0",
                                       "-s", "0"]) == 0
    out = capsys.readouterr().out
    assert "-w 0: fp32 parameters are their own master weights" in out
    assert "-ge 1: llmnp always applies the fc bias and GELU with the fc product" in out


def test_help_lists_llmcs_flags():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train_gpt2.py"), "--help"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0
    for flag in ("-sl", "-sg", "-nm", "-nk", "-r", "-w", "-f", "-lg", "-ge", "-pn", "-pr", "-pg", "-pi", "-pf", "-ps",
                 "-a", "-sh", "-z", "-h"):
        assert f"  {flag} " in p.stdout or f"  {flag}," in p.stdout, flag
    assert "(default: None)" not in p.stdout



# llm.c's defaults, from its flag table (train_gpt2.cu's usage and parser); None where llmnp fills the
# value in later (-e: the device's default file; -d -1 and -pn: B*T*processes and 1 process)
LLMC_GPU_DEFAULTS = dict(
    model=None, output_dir=None, log_gpu_every=-1, checkpoint_every=0, checkpoints_kept=0, major_every=0,
    resume=0, batch_size=4, seq_len=1024, total_batch=-1, max_steps=-1, schedule="cosine", lr=3e-4, warmup=0,
    final_lr_frac=1.0, weight_decay=0.0, skip_loss_z=0.0, skip_norm_z=0.0, val_every=20, val_batches=20,
    sample_every=20, gen_tokens=64, hellaswag=0, overfit_single_batch=0, tf32=1, master_weights=1,
    gelu_fusion=-1, zero_stage=0, recompute=1, num_processes=None, process_rank=0, gpus_per_node=8,
    init_method="mpi", dtype="bf16")
# the CPU: train_gpt2.c's demo (B=4, T=64, lr 1e-4, val every 10 steps over 5 batches), 20 steps (llmnp's)
LLMC_CPU_DEFAULTS = dict(LLMC_GPU_DEFAULTS, batch_size=4, seq_len=64, lr=1e-4, val_every=10, val_batches=5,
                         sample_every=20, max_steps=20, dtype="fp32")


@pytest.mark.parametrize("device, expected", [("cuda", LLMC_GPU_DEFAULTS), ("cpu", LLMC_CPU_DEFAULTS)])
def test_flag_defaults_are_llmcs(device, expected):
    args = vars(train_gpt2.parse_args(["--device", device]))
    assert {k: args[k] for k in expected} == expected

# ------------------------------------------------------------------- processes without mpiexec
@pytest.mark.parametrize("flags, words", [
    (["-pn", "2", "-pr", "0", "-pi", "fs", "-pf", "."], "needs --device cuda"),
    (["-pn", "2", "-pr", "2", "-pi", "fs", "-pf", "."], "-pr 2 is not a rank of -pn 2"),
    (["-pn", "2", "-pi", "fs"], "-pi fs needs -pf FOLDER"),
    (["-pn", "2", "-pi", "tcp"], "-pi tcp needs -ps ADDRESS"),
    (["-pn", "2", "-pi", "tcp", "-ps", "127.0.0.1"], "needs --device cuda"),      # -ps reaches the launch
    (["-pi", "fs"], "-pi fs needs -pf FOLDER"),                                    # -pi alone, without -pn
    (["-pn", "2"], "-pn 2, but 1 process(es) were started: start them with mpiexec -n N, or give -pi tcp/fs"),
])
def test_launch_flags_on_the_cpu_are_one_line(tiny_run, capsys, flags, words):
    assert words in fails(tiny_run + ["-x", "1"] + flags, capsys)


def _gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() if cupy.cuda.is_available() else 0
    except Exception:
        return 0


@requires_gpu
@pytest.mark.skipif(_gpu_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("method", ["fs", "tcp"])
def test_two_processes_started_by_hand_train_together(tiny_run, tmp_path, method):
    """Two processes started without mpiexec (as a scheduler starts them), NCCL id through a folder or
    TCP: the same losses as one process with twice the micro-batch in gradient accumulation."""
    flags = tiny_run + ["--device", "cuda", "--dtype", "fp32", "-f", "0", "-x", "3", "-v", "0", "-s", "0", "-d", "64",
                        "-sh", "0"]                       # the same batches as one process reads
    how = ["-pi", "fs", "-pf", str(tmp_path)] if method == "fs" else ["-pi", "tcp", "-ps", "127.0.0.1"]
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "train_gpt2.py"), *flags, "-pn", "2", "-pr", str(r),
                               "-pg", "2", *how], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "2 processes (started with -pi %s), gradients reduced by NCCL" % method in outs[0][0]
    one = subprocess.run([sys.executable, os.path.join(ROOT, "train_gpt2.py"), *flags], capture_output=True,
                         text=True, cwd=ROOT)
    losses = [[float(l.split("| loss ")[1].split()[0]) for l in o.splitlines() if l.startswith("step ")]
              for o in (outs[0][0], one.stdout)]
    np.testing.assert_allclose(losses[0], losses[1], atol=2e-5)


@requires_gpu
def test_bf16_without_master_weights_trains_and_saves_memory(tiny_run, capsys):
    assert train_gpt2.main(tiny_run + ["--device", "cuda", "-x", "3", "-w", "0", "-v", "0", "-s", "0", "-lg", "1"]) == 0
    out = capsys.readouterr().out
    assert "gpu: " in out and "step    3/3" in out
    with_master = GPT2(GPT2Config.tiny(), device="cuda", dtype="bfloat16")
    without = GPT2(GPT2Config.tiny(), device="cuda", dtype="bfloat16", master_weights=False)
    assert with_master.master_memory is not None and without.master_memory is None


def test_mpiexec_without_pn_takes_its_process_count(tiny_run, capsys, monkeypatch):
    """Started by mpiexec -n 2 without -pn (a stand-in mpi4py, process 0 of 2): no launch of 1 process is
    assumed; the run goes on as 2 processes, up to its first collective (which the stand-in cannot do)."""
    import types
    import llmnp.distributed

    class Collective(Exception):
        pass

    class World:
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 2

        def Split_type(self, kind):
            return self

        def __getattr__(self, name):
            raise Collective(name)
    mpi4py = types.ModuleType("mpi4py")
    mpi4py.MPI = types.SimpleNamespace(COMM_WORLD=World(), COMM_TYPE_SHARED=0, SUM="sum", MAX="max", IN_PLACE=None)
    monkeypatch.setitem(sys.modules, "mpi4py", mpi4py)
    monkeypatch.setattr(llmnp.distributed, "launcher_rank_size", lambda: (0, 2))
    with pytest.raises(Collective):
        train_gpt2.main(tiny_run + ["-x", "1", "-v", "0", "-s", "0"])
    assert "2 processes (started by mpiexec), gradients reduced by MPI" in capsys.readouterr().out
