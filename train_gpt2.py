"""Train GPT-2 on llm.c token shards: llm.c's train_gpt2cu, in Python, on the CPU or one/many GPUs.

    python train_gpt2.py                                   # CPU: fine-tune gpt2_124M.bin (or a random d12)
                                                           # on TinyShakespeare for a few steps, then sample
    python train_gpt2.py --device cuda -e d12 -b 64 -t 1024 -d 524288 -l 6e-4 -u 700 -q 0 -c 0.1 \\
        -i "dev/data/edu_fineweb10B/edu_fineweb_train_*.bin" -j "dev/data/edu_fineweb10B/edu_fineweb_val_*.bin" \\
        -o log124M -v 250 -s 20000 -n 5000 -h 1            # llm.c's GPT-2 124M run
    mpiexec -n 8 python train_gpt2.py --device cuda ...    # data parallel, one process per GPU
    python train_gpt2.py -o log124M -y 1 ...               # resume from the latest checkpoint in log124M

Flags are llm.c's (-i -j -o -e -b -t -d ...); `--help` lists them (-h is HellaSwag, as in llm.c).
The loop, per step: val loss every -v steps, HellaSwag (-h 1), a sample every -s steps, a checkpoint
every -n steps, then forward/backward over the micro-batches (gradient accumulation up to -d tokens),
gradient averaging across processes, clipping at norm 1.0, the learning rate schedule, AdamW, a log line.
"""
import contextlib
import glob
import math
import os
import re
import signal
import sys
import time

# Under mpiexec, the processes of one machine share its cores: each gets cores / processes BLAS threads
# (set before NumPy loads its BLAS; busy threads of one process would otherwise starve the others).
_LOCAL_PROCS = int(os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or 1)
if _LOCAL_PROCS > 1:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, (os.cpu_count() or 1) // _LOCAL_PROCS)))

import numpy as np  # noqa: E402

from llmnp import GPT2, GPT2Config, cli  # noqa: E402
from llmnp.adamw import BETA1, BETA2, EPS  # noqa: E402
from llmnp.errors import Interrupted, UserError, run_cli  # noqa: E402
from llmnp.fileio import io_error  # noqa: E402
from llmnp import memory, nonfinite  # noqa: E402
from llmnp.schedule import SCHEDULES, get_lr  # noqa: E402

LLMC_TRAIN = "dev/data/tinyshakespeare/tiny_shakespeare_train.bin"
LLMC_VAL = "dev/data/tinyshakespeare/tiny_shakespeare_val.bin"

DEFAULT_MODEL = {"cpu": "gpt2_124M.bin", "cuda": "gpt2_124M_bf16.bin"}   # when -e is not given
# Defaults that depend on the device. On the GPU they are llm.c's train_gpt2cu defaults; on the CPU,
# llm.c's train_gpt2.c demo (B=4, T=64, lr 1e-4, val every 10 steps over 5 batches) with 20 steps.
DEVICE_DEFAULTS = {
    "cpu": dict(batch_size=4, seq_len=64, lr=1e-4, max_steps=20,
                val_every=10, val_batches=5, sample_every=20),
    "cuda": dict(batch_size=4, seq_len=1024, lr=3e-4, max_steps=-1,
                 val_every=20, val_batches=20, sample_every=20),
}

# bf16 dense tensor-core peaks (TFLOP/s) by device name, for MFU; llm.c's table scaled to these parts
PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
                    "A100": 312.0, "A10G": 125.0, "L4": 121.0, "RTX 4090": 165.0}


def make_parser():  # pragma: no mutate block
    """The flags, as a declaration: names, types, defaults and help text (tests/test_llmc_flags.py
    checks the names and defaults against llm.c's; the rules that join flags live in parse_args)."""
    p = cli.ArgumentParser("python train_gpt2.py", "Train GPT-2 (llm.c's flags).", add_help=False)
    p.add_argument("--help", action="help", help="show this message and exit")
    g = p.add_argument_group("data / io")
    g.add_argument("-i", "--train", default=None, help=f"train shard glob [{LLMC_TRAIN}]")
    g.add_argument("-j", "--val", default=None, help=f"val shard glob [{LLMC_VAL}]")
    g.add_argument("-o", "--output-dir", default=None, help="log and checkpoint folder [none: nothing is saved]")
    g.add_argument("-e", "--model", default=None,
                   help="llm.c .bin, HF GPT-2 folder/.safetensors, or d12/d24/d36/d48 for a random init "
                        "[cpu: gpt2_124M.bin, cuda: gpt2_124M_bf16.bin; d12 if absent]")
    g.add_argument("-n", "--checkpoint-every", type=cli.count, default=0, help="steps between checkpoints [0: only at the end]")
    g.add_argument("-nk", "--checkpoints-kept", type=cli.count, default=0, help="keep only the last N checkpoints [0: all]")
    g.add_argument("-nm", "--major-every", type=cli.count, default=0,
                   help="steps between major checkpoints, which -nk never deletes [0: none]")
    g.add_argument("-y", "--resume", type=int, default=0, choices=(0, 1), help="resume from the latest checkpoint in -o")
    g = p.add_argument_group("batch / steps")
    g.add_argument("-b", "--batch-size", type=cli.positive_int, default=None, help="micro-batch B per process [cpu 4, cuda 4]")
    g.add_argument("-t", "--seq-len", type=cli.positive_int, default=None, help="sequence length T [cpu 64, cuda 1024]")
    g.add_argument("-d", "--total-batch", type=cli.positive_or_all, default=-1,
                   help="tokens per step, all processes [-1: B*T*processes]")
    g.add_argument("-x", "--max-steps", type=cli.positive_or_all, default=None, help="steps (-1: one epoch) [cpu 20, cuda -1]")
    g.add_argument("-a", "--overfit-single-batch", type=int, default=0, choices=(0, 1), help="train on one val batch")
    g.add_argument("-sh", "--shuffle", type=int, default=1, choices=(0, 1), help="shuffle the training data")
    g = p.add_argument_group("optimization")
    g.add_argument("-l", "--lr", type=cli.finite_nonneg, default=None, help="peak learning rate [cpu 1e-4, cuda 3e-4]")
    g.add_argument("-u", "--warmup", type=cli.count, default=0, help="warmup steps")
    g.add_argument("-q", "--final-lr-frac", type=cli.fraction, default=1.0, help="final learning rate / peak")
    g.add_argument("-k", "--schedule", default="cosine", choices=SCHEDULES, help="learning rate schedule")
    g.add_argument("-c", "--weight-decay", type=cli.finite_nonneg, default=0.0, help="AdamW weight decay (2-D weights only)")
    g.add_argument("-sl", "--skip-loss-z", type=cli.finite_nonneg, default=0.0,
                   help="skip the update when the loss z-score exceeds this [0: never]")
    g.add_argument("-sg", "--skip-norm-z", type=cli.finite_nonneg, default=0.0,
                   help="skip the update when the gradient norm z-score exceeds this [0: never]")
    g = p.add_argument_group("evaluation")
    g.add_argument("-v", "--val-every", type=cli.count, default=None, help="steps between val losses, 0: never [cpu 10, cuda 20]")
    g.add_argument("-m", "--val-batches", type=cli.positive_or_all, default=None,
                   help="val batches per process (-1: all) [cpu 5, cuda 20]")
    g.add_argument("-s", "--sample-every", type=cli.count, default=None, help="steps between samples, 0: never [20]")
    g.add_argument("-g", "--gen-tokens", type=cli.count, default=64, help="tokens per sample")
    g.add_argument("-h", "--hellaswag", type=int, default=0, choices=(0, 1), help="HellaSwag at the val cadence")
    g = p.add_argument_group("system")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train: the CPU or a CUDA GPU")
    g.add_argument("--dtype", default=None, choices=("fp32", "bf16"), help="[cpu fp32, cuda bf16]")
    g.add_argument("-r", "--recompute", type=int, default=1, choices=(0, 1, 2),
                   help="recompute in backward instead of storing: 1 GELU, 2 GELU and layernorms (less memory)")
    g.add_argument("-w", "--master-weights", type=int, default=1, choices=(0, 1),
                   help="bf16: keep fp32 master weights for AdamW (0: update the bf16 weights directly)")
    g.add_argument("-f", "--tf32", type=int, default=1, choices=(0, 1), help="fp32 on the GPU: TF32 tensor-core products")
    g.add_argument("-ge", "--gelu-fusion", type=int, default=-1, choices=(-1, 0, 1, 2),
                   help="accepted for llm.c's scripts: llmnp always fuses GELU with the fc bias")
    g.add_argument("-lg", "--log-gpu-every", type=int, default=-1, help="steps between GPU memory lines [-1: never]")
    g.add_argument("-z", "--zero-stage", type=int, default=0, choices=(0, 1), help="ZeRO stage: 1 shards AdamW state")
    g.add_argument("--seed", type=cli.seed_int, default=42, help="seed of a random init")
    g.add_argument("--estimate", action="store_true",
                   help="print the memory, disk and time this run would take, then exit without training")
    g.add_argument("--check-finite", action="store_true",
                   help="check every layer's outputs for NaN and inf in every step (slower; names the first)")
    g = p.add_argument_group("processes started without mpiexec (a cluster scheduler starts each one)")
    g.add_argument("-pn", "--num-processes", type=cli.positive_int, default=None, help="processes in all [1]")
    g.add_argument("-pr", "--process-rank", type=cli.count, default=0, help="this process's rank")
    g.add_argument("-pg", "--gpus-per-node", type=cli.positive_int, default=8, help="GPUs per machine")
    g.add_argument("-pi", "-pm", "--init-method", default="mpi", choices=("mpi", "tcp", "fs"),
                   help="how the processes find each other: mpi (mpiexec), tcp (-ps), fs (-pf)")
    g.add_argument("-pf", "-pp", "--init-folder", default=None, help="fs: a folder every process can read")
    g.add_argument("-ps", "--init-server", default=None, help="tcp: the address of process 0")
    return p


def parse_args(argv):
    args = make_parser().parse_args(argv)
    for key, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.dtype == "bf16" and args.device == "cpu":
        raise UserError("--dtype bf16 needs --device cuda (the CPU trains in fp32)")
    if args.resume and not args.output_dir:
        raise UserError("-y 1 needs -o, the folder holding the checkpoints")
    return args


# ------------------------------------------------------------------------------------- setup
def prepare_output_dir(args):
    """The -o folder, checked at the start (not at the first checkpoint): writable, and not holding
    another run unless -y 1 continues it. Returns (step, model path) of its latest complete
    checkpoint with -y 1, else None."""
    from llmnp.checkpoint import latest_checkpoint
    from llmnp.fileio import check_writable
    out = check_writable(args.output_dir, "-o folder")
    if args.resume:
        return latest_checkpoint(out)
    earlier = [f for f in os.listdir(out) if f == "main.log" or re.fullmatch(r"(model|state|DONE)_\d{8}.*", f)]
    if earlier:
        raise UserError(f"-o {out} already holds a run ({len(earlier)} files: main.log, checkpoints): "
                        f"continue it with -y 1, or give a new -o folder")
    return None


def load_model(args, log, checkpoint=None):
    """The model to train: the checkpoint being resumed (whose shape -e, if given, must match), or the
    one -e names: a checkpoint file, HF weights, or a dN descriptor for a random init."""
    dtype = {"fp32": np.float32, "bf16": "bfloat16"}[args.dtype]
    make = dict(device=args.device, dtype=dtype, recompute=args.recompute, master_weights=bool(args.master_weights))
    if checkpoint is not None:
        step, path = checkpoint
        from llmnp.checkpoint import load_model as read_model
        config, flat = read_model(path)
        wanted = expected_config(args)
        if wanted is not None and wanted != config:
            raise UserError(f"-y 1: the checkpoint {path} is a {describe(config)} model, -e {args.model} is a "
                            f"{describe(wanted)}: resume with the -e of the run that wrote it (or drop -e)")
        log(f"resuming from {path} (step {step})")
        model = GPT2(config, init=False, **make)
        model.load_parameters(flat)
        return model
    name = args.model or DEFAULT_MODEL[args.device]
    if not os.path.exists(name) and args.model is None:
        log(f"{name} not found: training a randomly initialised d12 instead "
            f"(python -m llmnp.download gpt2 writes OpenAI's GPT-2 weights as {name})")
        name = "d12"
    if os.path.exists(name):
        model = GPT2.load(name, **make)
        log(f"loaded {model.source}")
        return model
    config = preset(name)
    log(f"initialising a random {name} (seed {args.seed})")
    return GPT2(config, seed=args.seed, **make)


def preset(name):
    if name.endswith(".bin") or os.sep in name:
        raise UserError(f"model file {name} not found (give -e a .bin path, an HF folder, or d12/d24/d36/d48)")
    try:
        return GPT2Config.preset(name)
    except ValueError as e:
        raise UserError(str(e)) from None


def expected_config(args):
    """The config -e asks for (None when -e is not given): a descriptor's shape, or a file's header."""
    if args.model is None:
        return None
    if os.path.exists(args.model):
        from llmnp.checkpoint import read_weights
        return read_weights(args.model)[0]
    return preset(args.model)


def describe(config):
    c = config
    return f"L={c.num_layers} NH={c.num_heads} C={c.channels} V={c.vocab_size} maxT={c.max_seq_len}"


def device_peak_flops(device):
    """bf16 peak FLOP/s of the GPU in use, or None when unknown (MFU is then printed as n/a)."""
    if device != "cuda":
        return None
    import cupy
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    for key, tflops in PEAK_BF16_TFLOPS.items():   # most specific names first
        if key in name:
            return tflops * 1e12
    return None


class OutlierDetector:
    """llm.c's -sl/-sg statistic: NaN while the first 128 values come in; then each new value replaces
    the oldest and gets its z-score within the window it is now part of (0 when the window is constant)."""

    def __init__(self, window=128):
        self.window, self.values = window, []

    def update(self, x):
        full = len(self.values) == self.window
        if full:
            self.values.pop(0)
        self.values.append(x)
        if not full:
            return float("nan")
        mean = sum(self.values) / self.window
        std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / self.window)
        return (x - mean) / std if std > 0 else 0.0


class XorShift:
    """llm.c's sampling RNG: xorshift64* giving 32-bit ints and floats in [0, 1)."""
    MASK = (1 << 64) - 1

    def __init__(self, seed):
        self.state = seed

    def random_u32(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & self.MASK
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & self.MASK) >> 32

    def random_f32(self):
        return (self.random_u32() >> 8) / 16777216.0


def sample_tokens(model, gen_tokens, on_token):
    """llm.c's sampler: start from <|endoftext|>, temperature 1, no top-k, coin from xorshift(1337);
    one full forward per new token (the KV-cached generator is llmnp.generate). A model whose own
    vocabulary is smaller than GPT-2's starts from its last token id instead of EOT."""
    from llmnp.tokenizer import EOT
    V = model.config.vocab_size
    rng = XorShift(1337)
    tokens = [min(EOT, V - 1)]
    limit = min(gen_tokens, model.batch_shape[1], model.config.max_seq_len)
    for t in range(1, limit):
        model.forward(np.array([tokens], dtype=np.int32))
        logits = model.to_host(model.logits[0, t - 1, :V])
        p = np.exp(logits.astype(np.float64) - logits.max())
        cdf = np.cumsum(p)
        coin = rng.random_f32() * cdf[-1]
        token = int(min(np.searchsorted(cdf, coin, side="right"), V - 1))   # first index past the coin
        tokens.append(token)
        on_token(token)
    return tokens


# ------------------------------------------------------------------------------- checkpoints
def save_checkpoint(args, dist, model, train_loader, step, log):
    """model_%08d.bin (rank 0), state_%08d_%05d.bin (every process), then DONE_%08d, which marks the
    checkpoint complete; then -nk removes the oldest. A model holding NaN or inf is never written."""
    from llmnp.checkpoint import save_state
    out = args.output_dir
    dist.gather_master_weights(model)        # every process: a collective
    if not model.is_finite():                # every process holds the same weights, so all stop here
        raise UserError(f"step {step}: the weights hold NaN or inf after the update (training diverged): "
                        f"checkpoint not written; {last_checkpoint_words(out)}")
    if dist.rank == 0:
        model.save_checkpoint(os.path.join(out, f"model_{step:08d}.bin"),
                              dtype="bfloat16" if args.dtype == "bf16" else "float32")
    save_state(os.path.join(out, f"state_{step:08d}_{dist.rank:05d}.bin"), **training_state(model, dist, train_loader, step))
    dist.barrier()
    if dist.rank == 0:
        from llmnp.fileio import write_atomic
        write_atomic(os.path.join(out, f"DONE_{step:08d}"), b"")
        log(f"wrote checkpoint {out}/model_{step:08d}.bin")
        if args.checkpoints_kept > 0 and args.checkpoint_every > 0:
            old = step - args.checkpoints_kept * args.checkpoint_every
            if args.major_every > 0 and old % args.major_every == 0:
                return                               # a major checkpoint (-nm): kept
            for pattern in (f"DONE_{old:08d}", f"model_{old:08d}.bin", f"state_{old:08d}_*.bin"):   # DONE first
                for f in glob.glob(os.path.join(out, pattern)):
                    os.remove(f)


def last_checkpoint_words(out):
    """'the last complete checkpoint is step N in OUT (-y 1 resumes from it)', or that there is none."""
    from llmnp.checkpoint import latest_checkpoint
    latest = latest_checkpoint(out) if out and os.path.isdir(out) else None
    if latest is None:
        return "nothing was saved" + ("" if out else " (no -o given)")
    return f"the last complete checkpoint is step {latest[0]} in {out} (-y 1 resumes from it)"


def training_state(model, dist, train_loader, step):
    m, v, master = model.optimizer_state_to_host()
    return dict(step=step, rank=dist.rank, world_size=dist.world_size, m=m, v=v, master=master,
                loader_state=train_loader.state_dict())     # the loader's state says whether it shuffles


def resume(args, dist, model, train_loader, checkpoint):
    """Load this process's optimizer and loader state of the checkpoint the model was loaded from."""
    from llmnp.checkpoint import load_state
    step, _ = checkpoint
    state_path = os.path.join(args.output_dir, f"state_{step:08d}_{dist.rank:05d}.bin")
    if not os.path.exists(state_path):
        written = len(glob.glob(os.path.join(args.output_dir, f"state_{step:08d}_*.bin")))
        raise UserError(f"{state_path} is missing: " + (
            f"the checkpoint at step {step} has {written} state file(s), this run has {dist.world_size} "
            f"processes: resume with the same count" if written else
            f"the checkpoint at step {step} has no state files (deleted?): resume from an earlier one"))
    start, end = model.shard
    state = load_state(state_path, num_parameters=end - start)
    if state["world_size"] != dist.world_size or state["rank"] != dist.rank:
        raise UserError(f"{state_path}: written by process {state['rank']} of {state['world_size']}, this is "
                        f"process {dist.rank} of {dist.world_size}: resume with the same number of processes")
    model.load_optimizer_state(state["m"], state["v"], state.get("master"))
    try:
        train_loader.load_state_dict(state["loader_state"])
    except UserError as e:
        raise UserError(f"{state_path}: {e} (resume with the -i, -b, -t and -sh of the run that wrote it)") from None
    return step


# ---------------------------------------------------------------------------------- signals
class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (what a scheduler sends before it kills a job): the first finishes
    the step in flight, writes a checkpoint and exits with 128 + the signal; a second stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log, saving):
        self.signum, self.log, self.saving = None, log, saving
        self.saved_step = None                   # the last step a checkpoint was written at, for the message
        self.previous = [signal.signal(signum, self.handle) for signum in self.SIGNALS]

    def close(self):
        """The handlers from before, once the loop is over (a signal now meets a program that is ending)."""
        for signum, handler in zip(self.SIGNALS, self.previous):
            signal.signal(signum, handler)

    def handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            raise Interrupted(f"{name} again: stopped at once; "
                              + ("nothing was saved (no -o given)" if not self.saving else
                                 "nothing saved since the start" if self.saved_step is None else
                                 f"nothing saved after the checkpoint at step {self.saved_step}"), signum)
        self.signum = signum
        self.log(f"\n{name}: finishing this step, then " + ("writing a checkpoint" if self.saving else
                 "stopping; nothing will be saved (no -o given)") + f"; {name} again stops at once", flush=True)


# -------------------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # check_finite catches NaN and inf
        return train(args)


def train(args):
    from llmnp.corpus import default_corpus
    from llmnp.data import DataLoader
    from llmnp.distributed import Distributed, Launch
    launch = None
    if args.init_method != "mpi" or args.num_processes is not None:
        launch = Launch(args.num_processes or 1, args.process_rank, args.gpus_per_node, args.init_method,
                        args.init_folder, args.init_server)
    dist = Distributed(args.device, launch)
    log = print if dist.rank == 0 else (lambda *a, **k: None)
    if dist.describe():
        log(dist.describe())
    if args.device == "cuda":
        from llmnp.cuda.runtime import set_tf32
        set_tf32(bool(args.tf32))                # fp32 products on TF32 tensor cores (llm.c's -f 1)
    if args.gelu_fusion != -1:
        log(f"-ge {args.gelu_fusion}: llmnp always applies the fc bias and GELU with the fc product "
            f"(matmul_gelu_forward); the flag changes nothing")
    if args.dtype == "fp32" and not args.master_weights:
        log("-w 0: fp32 parameters are their own master weights; the flag changes nothing")

    # --- everything that can be checked is checked here, before step 1
    checkpoint = prepare_output_dir(args) if args.output_dir else None
    if args.resume and checkpoint is None:
        log(f"-y 1: no complete checkpoint (DONE_* file) in {args.output_dir}, starting from step 0")
    train_pattern, val_pattern = args.train, args.val
    if train_pattern is None and val_pattern is None and not os.path.exists(LLMC_TRAIN):
        train_pattern, val_pattern = default_corpus()
    train_pattern, val_pattern = train_pattern or LLMC_TRAIN, val_pattern or LLMC_VAL
    if args.overfit_single_batch:
        train_pattern = val_pattern
    B, T = args.batch_size, args.seq_len
    tokens_per_micro_step = B * T * dist.world_size
    total_batch = args.total_batch if args.total_batch > 0 else tokens_per_micro_step
    if total_batch % tokens_per_micro_step != 0:
        raise UserError(f"-d {total_batch} is not a multiple of B*T*processes = {B}*{T}*{dist.world_size} "
                        f"= {tokens_per_micro_step}")
    grad_accum_steps = total_batch // tokens_per_micro_step
    model = load_model(args, log, checkpoint)
    c = model.config
    if T > c.max_seq_len:
        raise UserError(f"-t {T} exceeds the model's max_seq_len {c.max_seq_len}")
    dist.setup_zero(model, args.zero_stage)
    V = c.vocab_size
    train_loader = DataLoader(train_pattern, B, T, rank=dist.rank, world_size=dist.world_size,
                              shuffle=bool(args.shuffle) and not args.overfit_single_batch,
                              seed=42, vocab_size=V)   # the loader adds the rank, as llm.c
    val_loader = DataLoader(val_pattern, B, T, rank=dist.rank, world_size=dist.world_size, vocab_size=V)
    num_steps = args.max_steps if args.max_steps > 0 else train_loader.num_tokens // total_batch
    if num_steps <= 0:
        raise UserError(f"the training data ({train_loader.num_tokens} tokens) is smaller than one step "
                        f"of {total_batch} tokens: give -x or a smaller -d")
    val_batches = val_loader.num_batches if args.val_batches < 0 else min(args.val_batches, val_loader.num_batches)
    hellaswag = hellaswag_examples(args, model, B, T, log)
    est = memory.estimate(c, B, T, args.dtype, args.recompute, dist.world_size, args.zero_stage, args.device,
                          checkpoint_every=args.checkpoint_every, num_steps=num_steps if args.output_dir else 0,
                          checkpoints_kept=args.checkpoints_kept, master_weights=bool(args.master_weights))
    for line in est.lines():
        log(line)
    if args.estimate:
        log(memory.predict_step_ms(c, B, T, args.dtype, args.device, grad_accum_steps)[1])
        return 0
    memory.check_fits(est, allocated=est.model_bytes)   # one line, with the largest -b that fits
    model.allocate(B, T)                         # everything a step needs, before the first step
    start_step = resume(args, dist, model, train_loader, checkpoint) if checkpoint else 0
    log(f"model: L={c.num_layers} NH={c.num_heads} C={c.channels} maxT={c.max_seq_len} V={V} Vp={c.padded_vocab_size}, "
        f"{model.num_parameters:,} parameters, {args.device} {args.dtype}")
    log(f"train: {train_pattern} ({train_loader.num_tokens:,} tokens), val: {val_pattern} ({val_batches} batches)")
    log(f"batch: B={B} T={T} processes={dist.world_size} grad_accum={grad_accum_steps} -> {total_batch} tokens/step, "
        f"{num_steps} steps")
    if checkpoint:
        log(f"resumed from {args.output_dir} at step {start_step}")
    if args.device == "cuda":
        log("the first forward and backward compile the CUDA kernels (NVRTC; CuPy caches them on disk)")
    logfile = None
    if args.output_dir and dist.rank == 0:
        logfile = open(os.path.join(args.output_dir, "main.log"), "a" if args.resume else "w")

    def log_line(text):
        if logfile:
            try:
                logfile.write(text + "\n")
                logfile.flush()
            except OSError as e:                 # a full disk mid-run: one line, the checkpoints stay
                raise io_error(logfile.name, e) from None

    def due(n, step):
        """Whether a cadence of n steps (0: never) falls on step, the last step included; the resumed
        step's evaluations were done by the run that wrote its checkpoint."""
        return n > 0 and (step % n == 0 or step == num_steps) and not (checkpoint and step == start_step)

    stop = StopRequest(log, saving=bool(args.output_dir))
    peak_flops = device_peak_flops(args.device)
    loss_outliers, norm_outliers = OutlierDetector(), OutlierDetector()
    ema_tok_s, step_times = 0.0, []
    try:
        for step in range(start_step, num_steps + 1):
            last = step == num_steps
            stopping = dist.any(stop.signum is not None)
            # 1. checkpoint: every -n steps, at the end, and on a stop request; before any evaluation, so
            #    nothing that runs after the last step can cost the run its checkpoint
            if args.output_dir and step > start_step and step != stop.saved_step and (
                    last or stopping or (args.checkpoint_every > 0 and step % args.checkpoint_every == 0)):
                save_checkpoint(args, dist, model, train_loader, step, log)
                stop.saved_step = step
            if stopping:
                signum = stop.signum or signal.SIGINT
                raise Interrupted(f"stopped after step {step} ({signal.Signals(signum).name}): "
                                  f"{last_checkpoint_words(args.output_dir)}", signum)
            # 2. evaluations and a sample
            if due(args.val_every, step):
                val_loader.reset()
                val_loss = 0.0
                for _ in range(val_batches):
                    x, y = val_loader.next_batch()
                    batch_loss = float(model.validate(x, y))
                    check_finite(step, "val loss", batch_loss, args.output_dir, model, [(x, y)])
                    val_loss += batch_loss
                val_loss = dist.average(val_loss / val_batches)
                log(f"val loss {val_loss:f}")
                log_line(f"s:{step} tel:{val_loss:.4f}")
                if step_times and not last:
                    log(memory.eta_line(step, num_steps, step_times))
            if hellaswag and step > 0 and due(args.val_every, step):
                from llmnp.hellaswag import evaluate_examples
                correct, total = evaluate_examples(model, hellaswag, B=B, rank=dist.rank, world_size=dist.world_size,
                                                   allreduce=dist.sum)
                log(f"HellaSwag: {correct}/{total} = {correct / total:f}")
                log_line(f"s:{step} eval:{correct / total:.4f}")
            if dist.rank == 0 and step > 0 and due(args.sample_every, step):
                from llmnp.tokenizer import StreamDecoder
                decoder = StreamDecoder()
                print("generating:\n---")
                sample_tokens(model, args.gen_tokens, lambda tok: print(decoder.feed(tok), end="", flush=True))
                print(decoder.flush() + "\n---", flush=True)
            if last:
                break

            # 3. one optimization step
            t0 = time.perf_counter()
            try:
                loss, norm, batches = forward_backward(args, dist, model, train_loader, grad_accum_steps)
            except nonfinite.NonFinite as e:                         # --check-finite found one
                raise UserError(f"step {step + 1}: {e}: {last_checkpoint_words(args.output_dir)}") from None
            for what, value in (("loss", loss), ("gradient norm", norm)):   # before the update touches the weights
                check_finite(step + 1, what, value, args.output_dir, model, batches, grad_accum_steps)
            zl, zn = loss_outliers.update(loss), norm_outliers.update(norm)
            lr = get_lr(step, num_steps, args.lr, args.warmup, args.final_lr_frac, args.schedule)
            if args.skip_loss_z > 0 and zl > args.skip_loss_z:            # llm.c's -sl / -sg
                log(f"skipping update due to loss z-score of {zl:f}")
            elif args.skip_norm_z > 0 and zn > args.skip_norm_z:
                log(f"skipping update due to grad z-score of {zn:f}")
            else:
                model.update(lr, BETA1, BETA2, EPS, args.weight_decay, step + 1, grad_scale=clip_scale(norm))
                dist.after_update(model)
            dt = time.perf_counter() - t0
            step_times.append(dt)

            # 4. the log line. tok/s: the first step (allocation, compilation) alone, then a bias-corrected EMA
            tok_s = total_batch / dt
            if len(step_times) > 1:
                ema_tok_s = 0.95 * ema_tok_s + 0.05 * tok_s
                tok_s = ema_tok_s / (1 - 0.95 ** (len(step_times) - 1))
            mfu = "n/a" if peak_flops is None else f"{100 * model.flops_per_token(T) * total_batch / dist.world_size / dt / peak_flops:.1f}%"
            log(f"step {step + 1:4d}/{num_steps} | loss {loss:7.6f} ({zl:+.2f}z)| norm {norm:6.4f} ({zn:+.2f}z)| "
                f"lr {lr:.2e} | {dt * 1000:.2f} ms | {mfu} bf16 MFU | {tok_s:.0f} tok/s", flush=True)
            log_line(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}")
            if args.device == "cuda" and args.log_gpu_every > 0 and (step + 1) % args.log_gpu_every == 0:
                log(gpu_memory_line())
    finally:
        stop.close()
    if step_times:
        timed = step_times[1:] or step_times
        log(f"total average iteration time: {1000 * sum(timed) / len(timed):f} ms")
    if logfile:
        logfile.close()
    dist.finish()
    return 0


def forward_backward(args, dist, model, train_loader, grad_accum_steps):
    """Forward and backward over the step's micro-batches, gradients accumulated and averaged over
    processes: (mean loss, global gradient norm, the micro-batches [(x, y)]); loss and norm are host
    floats (the step's two reads from the device). With --check-finite every layer's outputs are
    checked as they are made (nonfinite.checked)."""
    if args.overfit_single_batch:
        train_loader.reset()
    model.zero_grad()
    loss, batches = 0.0, []
    with nonfinite.checked(model) if args.check_finite else contextlib.nullcontext():
        for _ in range(grad_accum_steps):
            x, y = train_loader.next_batch()
            batches.append((x, y))
            loss = loss + model.forward_backward(x, y, grad_accum_steps)   # stays on the device until read below
    dist.reduce_gradients(model)
    norm = dist.grad_norm(model)
    return dist.average(float(loss) / grad_accum_steps), norm, batches


def gpu_memory_line():
    """-lg: the GPU's memory in use, as llm.c logs its GPU state every -lg steps."""
    import cupy
    free, total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool().total_bytes()
    return f"gpu: {(total - free) / 2**30:.1f} of {total / 2**30:.1f} GiB in use ({pool / 2**30:.1f} GiB by this process's pool)"


def clip_scale(norm, max_norm=1.0):
    """The factor the gradients are multiplied by to clip their global norm at max_norm."""
    return max_norm / norm if norm > max_norm else 1.0


def check_finite(step, what, value, output_dir, model=None, batches=(), grad_accum_steps=1):
    """Stop the run (one line, exit 1) at the first NaN or inf loss or gradient norm, before the weights
    take an update from it. With the step's micro-batches, they are run again with a check after every
    layer (nonfinite.locate), and the line names the first layer and tensor that held NaN or inf."""
    if math.isfinite(value):
        return
    where = None
    if model is not None and batches:
        where = nonfinite.locate(model, [x for x, _ in batches], [y for _, y in batches], grad_accum_steps, step=step)
    found = f"{where}; the {what} is {value}" if where else (
        f"step {step}: the {what} is {value}" + (" (running the step again with checks found no layer "
                                                  "output that was not finite)" if batches else ""))
    raise UserError(f"{found} (training diverged; a lower -l or more -u warmup usually helps): "
                    f"{last_checkpoint_words(output_dir)}")


def hellaswag_examples(args, model, B, T, log):
    """-h 1: the HellaSwag examples, checked against the model and (B, T) now rather than at the first
    evaluation; None without -h 1 or when the file is missing (said once)."""
    path = "dev/data/hellaswag/hellaswag_val.bin"
    if not args.hellaswag:
        return None
    if not os.path.exists(path):
        log(f"-h 1: {path} not found, skipping HellaSwag (python data/hellaswag.py writes it)")
        return None
    from llmnp.hellaswag import NUM_COMPLETIONS, check_fits, positions, read_examples
    if B < NUM_COMPLETIONS:
        raise UserError(f"-h 1 needs -b {NUM_COMPLETIONS} or more (an example's {NUM_COMPLETIONS} endings "
                        f"are scored in one batch), -b is {B}")
    examples = read_examples(path)
    check_fits(model, examples, path)
    longest = max(map(positions, examples), default=0)
    if longest > T:   # HellaSwag runs in the training activations (as llm.c): T must hold every example
        raise UserError(f"-h 1: HellaSwag examples need up to {longest} positions, -t is {T}: "
                        f"train with -t {longest} or more, or without -h 1")
    return examples


if __name__ == "__main__":
    run_cli(main)
