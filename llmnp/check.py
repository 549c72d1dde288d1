"""llm.c's test_gpt2: check a model against a debug state, tensor by tensor, then train 10 steps.

    python -m llmnp.check gpt2_124M.bin gpt2_124M_debug_state.bin [--device cuda]
    python -m llmnp.check MODEL.bin STATE.bin --write      # make STATE.bin from MODEL.bin (CPU, float64)

The debug state (checkpoint.py) holds one batch, the logits, the loss and all 16 parameter gradients
someone computed for MODEL.bin. This runs the same batch through llmnp on --device (float32) and prints,
per tensor, OK / NOT OK and the largest absolute difference, with test_gpt2.c's tolerances: logits
1e-2, loss 1e-2, every gradient element 2e-2 (wte over its first V rows). Then 10 AdamW steps on that
batch with the optimizer of llm.c's GPU test (test_gpt2.cu, = train_gpt2.py's): lr 1e-4, betas 0.9 /
0.95, eps 1e-8, weight decay 0, gradients clipped to global norm 1.0; printed losses are compared
(1e-2) with test_gpt2.cu's expected list for llm.c's own GPT-2 124M state, and for any other state
with the same 10 steps run fresh on the CPU in float64. Exit status 1 on any mismatch.

--write makes a state the way llm.c's train_gpt2.py does, but with llmnp in float64 on the CPU: the
batch is the first B*T+1 tokens of TinyShakespeare val (llmnp's default corpus when llm.c's is absent)
for a GPT-2-vocabulary model, random tokens (seed 0) for a smaller vocabulary.

Not here: the training program (train_gpt2.py), the reading and writing of the files (checkpoint.py).
"""
import sys

import numpy as np

from llmnp.adamw import BETA1, BETA2, EPS
from llmnp.checkpoint import read_debug_state, write_debug_state
from llmnp import cli
from llmnp.errors import UserError, run_cli
from llmnp.params import PARAMETER_NAMES, make_views, parameter_specs

TOL_LOGITS, TOL_LOSS, TOL_GRAD, TOL_STEP_LOSS = 1e-2, 1e-2, 2e-2, 1e-2
STEPS = 10
LR, WEIGHT_DECAY, GRAD_CLIP = 1e-4, 0.0, 1.0
# test_gpt2.cu's expected losses for gpt2_124M.bin + gpt2_124M_debug_state.bin (B=4, T=64)
LLMC_124M_LOSSES = [5.270009, 4.060681, 3.320085, 2.717550, 2.181066, 1.653923, 1.168050, 0.736873,
                    0.401021, 0.187493]


def build_model(model_path, device="cpu", dtype=np.float32):
    from llmnp.model import GPT2
    try:
        return GPT2.load(model_path, device=device, dtype=dtype)
    except ImportError as e:
        raise UserError(f"--device {device} is not available here ({e})") from None


def train_steps(model, x, y, steps=STEPS):
    """The losses before each of `steps` AdamW updates on one batch (test_gpt2.cu's optimizer)."""
    losses = []
    for t in range(1, steps + 1):
        losses.append(float(model.forward(x, y)))
        model.zero_grad()
        model.backward()
        norm = model.grad_norm()
        scale = GRAD_CLIP / norm if norm > GRAD_CLIP else 1.0
        model.update(LR, BETA1, BETA2, EPS, WEIGHT_DECAY, t, grad_scale=scale)
    return losses


def is_llmc_124M_state(config, state):
    from llmnp.config import GPT2Config
    return (config == GPT2Config.preset("d12") and (state["B"], state["T"]) == (4, 64)
            and abs(state["loss"] - LLMC_124M_LOSSES[0]) < TOL_STEP_LOSS)


def check(model_path, state_path, device="cpu", out=print):
    """Run the comparison, printing as it goes; True when everything is within tolerance."""
    model = build_model(model_path, device)
    config = model.config
    state = read_debug_state(state_path, config)
    B, T, V = state["B"], state["T"], config.vocab_size
    if T > config.max_seq_len:
        raise UserError(f"{state_path}: T={T} exceeds the model's max_seq_len {config.max_seq_len}")
    if state["inputs"].min() < 0 or max(state["inputs"].max(), state["targets"].max()) >= V:
        raise UserError(f"{state_path}: token ids outside [0, {V}): state and model do not belong together")
    x, y = state["inputs"], state["targets"]
    out(f"model {model_path}: L={config.num_layers} NH={config.num_heads} C={config.channels} V={V}, "
        f"device {device}; state {state_path}: B={B} T={T}")
    ok = True

    def report(name, maxdiff, tol, extra=""):
        nonlocal ok
        good = bool(maxdiff <= tol)                       # NaN is never good
        ok &= good
        out(f"{name:10s} {'OK' if good else 'NOT OK':7s} maxdiff = {maxdiff:.3e}{extra}")

    loss = float(model.forward(x, y))
    logits = model.to_host(model.logits)[..., :V]
    report("logits", float(np.abs(logits - state["logits"]).max()), TOL_LOGITS)
    report("loss", abs(loss - state["loss"]), TOL_LOSS, f"  ({loss:.6f} vs {state['loss']:.6f})")
    model.zero_grad()
    model.backward()
    expected = make_views(state["grads"], parameter_specs(config))
    for name in PARAMETER_NAMES:
        got, want = model.to_host(model.grads[name]), expected[name]
        if name == "wte":
            got, want = got[:V], want[:V]
        report(name, float(np.abs(got - want).max()), TOL_GRAD)

    if is_llmc_124M_state(config, state):
        reference, source = LLMC_124M_LOSSES, "llm.c test_gpt2.cu"
    else:
        reference, source = train_steps(build_model(model_path, "cpu", np.float64), x, y), "CPU float64"
    losses = train_steps(model, x, y)
    for step, (got, want) in enumerate(zip(losses, reference)):
        good = abs(got - want) <= TOL_STEP_LOSS
        ok &= good
        out(f"step {step}: loss {got:.6f} ({source} {want:.6f}) {'OK' if good else 'NOT OK'}")
    out(f"overall okay: {int(ok)}")
    return ok


def batch_tokens(config, B, T):
    """(inputs, targets) for --write: TinyShakespeare val for GPT-2's vocabulary, else random."""
    if config.vocab_size == 50257:
        from llmnp.corpus import default_corpus
        from llmnp.data import DataLoader
        _, val = default_corpus()
        return DataLoader(val, B, T).next_batch()
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (B, T + 1)).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def make_debug_state(model_path, state_path, B=4, T=64):
    """Write a debug state for model_path: one forward/backward in float64 on the CPU."""
    model = build_model(model_path, "cpu", np.float64)
    T = min(T, model.config.max_seq_len)
    x, y = batch_tokens(model.config, B, T)
    loss = float(model.forward(x, y))
    logits = model.logits.copy()
    model.zero_grad()
    model.backward()
    write_debug_state(state_path, x, y, logits, loss, model.grads_memory, model.config)
    return loss


def main(argv=None):
    ap = cli.ArgumentParser("python -m llmnp.check", __doc__.split("\n\n")[0])
    ap.add_argument("model", help="llm.c model file (.bin, fp32 or bf16)")
    ap.add_argument("state", help="llm.c debug state (.bin)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the model")
    ap.add_argument("--write", action="store_true", help="write STATE from MODEL instead of checking")
    ap.add_argument("-b", type=cli.positive_int, default=4, help="with --write: batch size B")
    ap.add_argument("-t", type=cli.positive_int, default=64, help="with --write: sequence length T")
    args = ap.parse_args(argv)
    if args.write:
        loss = make_debug_state(args.model, args.state, args.b, args.t)
        print(f"wrote {args.state}: B={args.b}, loss {loss:.6f} (llmnp, CPU float64)")
        return 0
    return 0 if check(args.model, args.state, args.device) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
