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
import argparse
import glob
import math
import os
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

from llmnp import GPT2, GPT2Config  # noqa: E402
from llmnp.errors import UserError, run_cli  # noqa: E402
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line: what is wrong, and where the list of flags is."""

    def error(self, message):
        raise UserError(f"{message} (python train_gpt2.py --help lists the flags)")


def parse_args(argv):
    p = ArgumentParser(description="Train GPT-2 (llm.c's flags).", add_help=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--help", action="help", help="show this message and exit")
    g = p.add_argument_group("data / io")
    g.add_argument("-i", "--train", default=None, help=f"train shard glob [{LLMC_TRAIN}]")
    g.add_argument("-j", "--val", default=None, help=f"val shard glob [{LLMC_VAL}]")
    g.add_argument("-o", "--output-dir", default=None, help="log and checkpoint dir (none: no files)")
    g.add_argument("-e", "--model", default=None,
                   help="llm.c .bin, HF GPT-2 folder/.safetensors, or d12/d24/d36/d48 for a random init "
                        "[cpu: gpt2_124M.bin, cuda: gpt2_124M_bf16.bin; d12 if absent]")
    g.add_argument("-n", "--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: only at the end)")
    g.add_argument("-nk", "--checkpoints-kept", type=int, default=0, help="keep only the last N checkpoints (0: all)")
    g.add_argument("-y", "--resume", type=int, default=0, choices=(0, 1), help="resume from the latest checkpoint in -o")
    g = p.add_argument_group("batch / steps")
    g.add_argument("-b", "--batch-size", type=int, default=None, help="micro-batch B per process [cpu 4, cuda 4]")
    g.add_argument("-t", "--seq-len", type=int, default=None, help="sequence length T [cpu 64, cuda 1024]")
    g.add_argument("-d", "--total-batch", type=int, default=-1, help="tokens per step, all processes (-1: B*T*processes)")
    g.add_argument("-x", "--max-steps", type=int, default=None, help="steps (-1: one epoch) [cpu 20, cuda -1]")
    g.add_argument("-a", "--overfit-single-batch", type=int, default=0, choices=(0, 1), help="train on one val batch")
    g.add_argument("-sh", "--shuffle", type=int, default=1, choices=(0, 1), help="shuffle the training data")
    g = p.add_argument_group("optimization")
    g.add_argument("-l", "--lr", type=float, default=None, help="peak learning rate [cpu 1e-4, cuda 3e-4]")
    g.add_argument("-u", "--warmup", type=int, default=0, help="warmup steps")
    g.add_argument("-q", "--final-lr-frac", type=float, default=1.0, help="final learning rate / peak")
    g.add_argument("-k", "--schedule", default="cosine", choices=SCHEDULES, help="learning rate schedule")
    g.add_argument("-c", "--weight-decay", type=float, default=0.0, help="AdamW weight decay (2-D weights only)")
    g = p.add_argument_group("evaluation")
    g.add_argument("-v", "--val-every", type=int, default=None, help="steps between val losses [cpu 10, cuda 20]")
    g.add_argument("-m", "--val-batches", type=int, default=None,
                   help="val batches per process (-1: all) [cpu 5, cuda 20]")
    g.add_argument("-s", "--sample-every", type=int, default=None, help="steps between samples [20]")
    g.add_argument("-g", "--gen-tokens", type=int, default=64, help="tokens per sample")
    g.add_argument("-h", "--hellaswag", type=int, default=0, choices=(0, 1), help="HellaSwag at the val cadence")
    g = p.add_argument_group("system")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    g.add_argument("--dtype", default=None, choices=("fp32", "bf16"), help="[cpu fp32, cuda bf16]")
    g.add_argument("-r", "--recompute", type=int, default=1, choices=(0, 1),
                   help="1: recompute GELU in backward instead of storing it (less memory, as llm.c's -r 1)")
    g.add_argument("-z", "--zero-stage", type=int, default=0, choices=(0, 1), help="ZeRO stage: 1 shards AdamW state")
    g.add_argument("--seed", type=int, default=42, help="seed of a random init")
    args = p.parse_args(argv)
    for key, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    return args


# ------------------------------------------------------------------------------------- setup
def load_model(args, dist, log):
    """The model named by -e: a checkpoint file, HF weights, or a dN descriptor for a random init."""
    dtype = {"fp32": np.float32, "bf16": "bfloat16"}[args.dtype]
    if args.dtype == "bf16" and args.device == "cpu":
        raise UserError("--dtype bf16 needs --device cuda (the CPU trains in fp32)")
    name = args.model or DEFAULT_MODEL[args.device]
    if not os.path.exists(name) and args.model is None:
        log(f"{name} not found: training a randomly initialised d12 instead "
            f"(python -m llmnp.download gpt2 writes OpenAI's GPT-2 weights as {name})")
        name = "d12"
    if os.path.isdir(name) or name.endswith(".safetensors"):
        log(f"loading Hugging Face GPT-2 weights from {name}")
        return GPT2.from_pretrained(name, device=args.device, dtype=dtype, recompute=args.recompute)
    if os.path.exists(name):
        log(f"loading {name}")
        return GPT2.from_checkpoint(name, device=args.device, dtype=dtype, recompute=args.recompute)
    if name.endswith(".bin") or os.sep in name:
        raise UserError(f"model file {name} not found (give -e a .bin path, an HF folder, or d12/d24/d36/d48)")
    try:
        config = GPT2Config.preset(name)
    except ValueError as e:
        raise UserError(str(e)) from None
    log(f"initialising a random {name} (seed {args.seed})")
    return GPT2(config, device=args.device, dtype=dtype, seed=args.seed, recompute=args.recompute)


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
    """z-score of a value against the last 128 (llm.c's -sl/-sg statistic); NaN until the window is full."""

    def __init__(self, window=128):
        self.window, self.values = window, []

    def update(self, x):
        z = float("nan")
        if len(self.values) == self.window:
            mean = sum(self.values) / self.window
            std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / self.window)
            z = (x - mean) / std if std > 0 else float("nan")
            self.values.pop(0)
        self.values.append(x)
        return z


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
    one full forward per new token (the KV-cached generator is llmnp.generate)."""
    from llmnp.tokenizer import EOT
    V = model.config.vocab_size
    rng = XorShift(1337)
    tokens = [EOT]
    limit = min(gen_tokens, model.T, model.config.max_seq_len)
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
    from llmnp.checkpoint import save_state
    out = args.output_dir
    dist.gather_master_weights(model)        # every process: a collective
    if dist.rank == 0:
        model.save_checkpoint(os.path.join(out, f"model_{step:08d}.bin"),
                              dtype="bfloat16" if args.dtype == "bf16" else "float32")
    save_state(os.path.join(out, f"state_{step:08d}_{dist.rank:05d}.bin"), **training_state(model, dist, train_loader, step))
    dist.barrier()
    if dist.rank == 0:
        open(os.path.join(out, f"DONE_{step:08d}"), "w").close()
        log(f"wrote checkpoint {out}/model_{step:08d}.bin")
        if args.checkpoints_kept > 0 and args.checkpoint_every > 0:
            old = step - args.checkpoints_kept * args.checkpoint_every
            for pattern in (f"model_{old:08d}.bin", f"state_{old:08d}_*.bin", f"DONE_{old:08d}"):
                for f in glob.glob(os.path.join(out, pattern)):
                    os.remove(f)


def training_state(model, dist, train_loader, step):
    m, v, master = model.optimizer_state_to_host()
    return dict(step=step, rank=dist.rank, world_size=dist.world_size, m=m, v=v, master=master,
                loader_state=train_loader.state_dict())     # the loader's state says whether it shuffles


def resume(args, dist, model, train_loader, log):
    from llmnp.checkpoint import latest_checkpoint, load_model, load_state
    latest = latest_checkpoint(args.output_dir)
    if latest is None:
        log(f"-y 1: no complete checkpoint (DONE_* file) in {args.output_dir}, starting from step 0")
        return 0
    step, model_path = latest
    _, flat = load_model(model_path)
    state_path = os.path.join(args.output_dir, f"state_{step:08d}_{dist.rank:05d}.bin")
    if not os.path.exists(state_path):
        raise UserError(f"{state_path} is missing: the checkpoint at step {step} was written by a different "
                        f"number of processes than {dist.world_size}; resume with the same count")
    start, end = dist.shard or (0, model.num_parameters)
    state = load_state(state_path, num_parameters=end - start)
    if state["world_size"] != dist.world_size or state["rank"] != dist.rank:
        raise UserError(f"checkpoint at step {step} was written by {state['world_size']} processes, "
                        f"this run has {dist.world_size}: resume with the same count")
    model.load_parameters(flat)
    model.load_optimizer_state(state["m"], state["v"], state.get("master"), shard=(start, end))
    train_loader.load_state_dict(state["loader_state"])
    log(f"resumed from {args.output_dir} at step {step}")
    return step


# -------------------------------------------------------------------------------------- main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from llmnp.data import DataLoader, default_corpus
    from llmnp.distributed import Distributed
    dist = Distributed(args.device)
    log = print if dist.rank == 0 else (lambda *a, **k: None)

    # --- data
    train_pattern, val_pattern = args.train, args.val
    if train_pattern is None and val_pattern is None and not os.path.exists(LLMC_TRAIN):
        train_pattern, val_pattern = default_corpus()
    train_pattern, val_pattern = train_pattern or LLMC_TRAIN, val_pattern or LLMC_VAL
    if args.overfit_single_batch:
        train_pattern = val_pattern
    B, T = args.batch_size, args.seq_len
    if B <= 0 or T <= 0:
        raise UserError(f"-b and -t must be positive (got B={B}, T={T})")
    tokens_per_micro_step = B * T * dist.world_size
    total_batch = args.total_batch if args.total_batch > 0 else tokens_per_micro_step
    if total_batch % tokens_per_micro_step != 0:
        raise UserError(f"-d {total_batch} is not a multiple of B*T*processes = {B}*{T}*{dist.world_size} "
                        f"= {tokens_per_micro_step}")
    grad_accum_steps = total_batch // tokens_per_micro_step
    model = load_model(args, dist, log)
    if T > model.config.max_seq_len:
        raise UserError(f"-t {T} exceeds the model's max_seq_len {model.config.max_seq_len}")
    V = model.config.vocab_size
    train_loader = DataLoader(train_pattern, B, T, rank=dist.rank, world_size=dist.world_size,
                              shuffle=bool(args.shuffle) and not args.overfit_single_batch,
                              seed=42, vocab_size=V)   # the loader adds the rank, as llm.c
    val_loader = DataLoader(val_pattern, B, T, rank=dist.rank, world_size=dist.world_size, vocab_size=V)
    num_steps = args.max_steps if args.max_steps > 0 else train_loader.num_tokens // total_batch
    if num_steps <= 0:
        raise UserError(f"the training data ({train_loader.num_tokens} tokens) is smaller than one step "
                        f"of {total_batch} tokens: give -x or a smaller -d")
    val_batches = val_loader.num_batches if args.val_batches < 0 else min(args.val_batches, val_loader.num_batches)
    c = model.config
    log(f"model: L={c.num_layers} NH={c.num_heads} C={c.channels} maxT={c.max_seq_len} V={V} Vp={c.padded_vocab_size}, "
        f"{model.num_parameters:,} parameters, {args.device} {args.dtype}")
    log(f"train: {train_pattern} ({train_loader.num_tokens:,} tokens), val: {val_pattern} ({val_batches} batches)")
    log(f"batch: B={B} T={T} processes={dist.world_size} grad_accum={grad_accum_steps} -> {total_batch} tokens/step, "
        f"{num_steps} steps")
    dist.setup_zero(model, args.zero_stage)
    if args.device == "cuda":
        log("the first forward and backward compile the CUDA kernels (NVRTC; CuPy caches them on disk)")

    # --- output dir, resume, the log file
    start_step = 0
    logfile = None
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        if args.resume:
            start_step = resume(args, dist, model, train_loader, log)
        if dist.rank == 0:
            logfile = open(os.path.join(args.output_dir, "main.log"), "a" if args.resume else "w")
    elif args.resume:
        raise UserError("-y 1 needs -o, the directory holding the checkpoints")

    def log_line(text):
        if logfile:
            logfile.write(text + "\n")
            logfile.flush()

    hellaswag_file = "dev/data/hellaswag/hellaswag_val.bin"
    if args.hellaswag and not os.path.exists(hellaswag_file):
        log(f"-h 1: {hellaswag_file} not found, skipping HellaSwag (python data/hellaswag.py writes it)")
        args.hellaswag = 0
    if args.hellaswag:   # HellaSwag runs in the training activations (as llm.c): T must hold every example
        from llmnp.hellaswag import positions, read_examples
        longest = max(map(positions, read_examples(hellaswag_file)), default=0)
        if longest > T:
            raise UserError(f"-h 1: HellaSwag examples need up to {longest} positions, -t is {T}: "
                            f"train with -t {longest} or more, or without -h 1")

    # Ctrl-C: finish the step in flight, write a checkpoint, then exit; a second Ctrl-C exits at once
    interrupted = []

    def on_sigint(signum, frame):
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        log("\ninterrupt: finishing this step" + (", then writing a checkpoint" if args.output_dir else ""))
    signal.signal(signal.SIGINT, on_sigint)

    peak_flops = device_peak_flops(args.device)
    loss_outliers, norm_outliers = OutlierDetector(), OutlierDetector()
    ema_tok_s, step_times = 0.0, []
    for step in range(start_step, num_steps + 1):
        if interrupted:
            if args.output_dir and step > start_step:
                save_checkpoint(args, dist, model, train_loader, step, log)
                log(f"stopped after step {step}: continue with the same flags and -y 1")
            break
        last = step == num_steps
        if step % args.val_every == 0 or last:
            val_loader.reset()
            val_loss = 0.0
            for _ in range(val_batches):
                x, y = val_loader.next_batch()
                val_loss += float(model.forward(x, y))
            val_loss = dist.average(val_loss / max(val_batches, 1))
            log(f"val loss {val_loss:f}")
            log_line(f"s:{step} tel:{val_loss:.4f}")
        if args.hellaswag and ((step > 0 and step % args.val_every == 0) or last):
            from llmnp.hellaswag import evaluate
            correct, total = evaluate(model, hellaswag_file, B=B, rank=dist.rank, world_size=dist.world_size,
                                      allreduce=dist.sum)
            log(f"HellaSwag: {correct}/{total} = {correct / total:f}")
            log_line(f"s:{step} eval:{correct / total:.4f}")
        if dist.rank == 0 and ((step > 0 and step % args.sample_every == 0) or last):
            from llmnp.tokenizer import StreamDecoder
            decoder = StreamDecoder()
            print("generating:\n---")
            sample_tokens(model, args.gen_tokens, lambda tok: print(decoder.feed(tok), end="", flush=True))
            print(decoder.flush() + "\n---", flush=True)
        if args.output_dir and step > start_step and (last or (args.checkpoint_every > 0 and step % args.checkpoint_every == 0)):
            save_checkpoint(args, dist, model, train_loader, step, log)
        if last:
            break

        # --- one optimization step
        t0 = time.perf_counter()
        if args.overfit_single_batch:
            train_loader.reset()
        model.zero_grad()
        loss = 0.0
        for _ in range(grad_accum_steps):
            x, y = train_loader.next_batch()
            loss = loss + model.forward(x, y)        # stays on the device until logged
            model.backward(grad_accum_steps=grad_accum_steps)
        dist.reduce_gradients(model)
        norm = dist.grad_norm(model)
        lr = get_lr(step, num_steps, args.lr, args.warmup, args.final_lr_frac, args.schedule)
        grad_scale = 1.0 / norm if norm > 1.0 else 1.0          # clip the global norm at 1.0
        model.update(lr, 0.9, 0.95, 1e-8, args.weight_decay, step + 1, grad_scale=grad_scale, shard=dist.shard)
        dist.after_update(model)
        loss = dist.average(float(loss) / grad_accum_steps)     # float(): the one host read of the step
        dt = time.perf_counter() - t0
        step_times.append(dt)

        # tok/s: the first step (allocation, compilation) alone, then a bias-corrected EMA of the rest
        tok_s = total_batch / dt
        if len(step_times) > 1:
            ema_tok_s = 0.95 * ema_tok_s + 0.05 * tok_s
            tok_s = ema_tok_s / (1 - 0.95 ** (len(step_times) - 1))
        mfu = "n/a" if peak_flops is None else f"{100 * model.flops_per_token * total_batch / dist.world_size / dt / peak_flops:.1f}%"
        zl, zn = loss_outliers.update(loss), norm_outliers.update(norm)
        log(f"step {step + 1:4d}/{num_steps} | loss {loss:7.6f} ({zl:+.2f}z)| norm {norm:6.4f} ({zn:+.2f}z)| "
            f"lr {lr:.2e} | {dt * 1000:.2f} ms | {mfu} bf16 MFU | {tok_s:.0f} tok/s", flush=True)
        log_line(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}")
    if step_times:
        timed = step_times[1:] or step_times
        log(f"total average iteration time: {1000 * sum(timed) / len(timed):f} ms")
    if logfile:
        logfile.close()
    dist.finish()


if __name__ == "__main__":
    run_cli(main)
