"""HellaSwag, scored as llm.c scores it: read its eval .bin, pick the ending the model finds least
surprising, count the right picks.

    python -m llmnp.hellaswag --model gpt2_124M.bin --device cuda           # dev/data/hellaswag/hellaswag_val.bin
    python -m llmnp.hellaswag --model out/ --data my_eval.bin --limit 500

The file (llm.c's dev/data/data_common.py writes it): a header of 256 int32, [0] magic 20240522,
[1] version 1, [2] number of examples, [3] bytes of the longest example; then per example a stream of
uint16: 65535, the example's byte count (all of its fields), its index, the label (the right ending),
the number of endings (4), the context length and tokens, then for each ending its length and tokens.

Scoring (llm.c's dataloader.h and train_gpt2.cu): each ending makes one row, context + ending; the loss
of a row is the mean cross-entropy over the ending's tokens only (the context's last token predicts the
ending's first); the prediction is the ending of lowest loss (ties: the first); accuracy = right picks /
examples (HellaSwag's acc_norm, as llm.c reports it). Batched scoring: B rows per forward pass (B/4
examples), the examples taken longest first so that each batch is padded only to its own longest row,
and the per-position losses come from the model's fused classifier (forward with targets: each row's
tokens shifted by one), so no (B, T, V) log-softmax is made; a row's loss is its masked mean, summed
on the device. With several processes, rank r takes the contiguous block of ceil(N / world_size)
examples starting at r * that; allreduce sums the counts.
Not here: writing the .bin from HellaSwag's jsonl (data/hellaswag.py), few-shot prompts.
"""
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from llmnp.fileio import new_header, open_file, read_header, write_atomic
from llmnp import cli
from llmnp.errors import UserError, run_cli

EVAL_MAGIC, EVAL_VERSION = 20240522, 1
EVAL_START = 65535                # <START_EXAMPLE> delimiter of an example
NUM_COMPLETIONS = 4                 # llm.c's ASSUMED_NUM_COMPLETIONS: 4 rows per example
DEFAULT_DATA = "dev/data/hellaswag/hellaswag_val.bin"


@dataclass
class Example:
    index: int
    label: int
    context: list      # token ids
    endings: list      # NUM_COMPLETIONS lists of token ids


def write_eval_file(path, examples):
    """llm.c's multiple-choice eval file (data_common.py write_evalfile). examples: dicts with
    label, ctx_tokens, ending_tokens (4 lists). Per example, uint16s: 65535, example bytes, index,
    label, #completions, len(ctx) + ctx, then len + tokens for each ending. Header: magic, version,
    #examples, longest example in bytes."""
    stream, longest = [], 0
    if len(examples) >= 2**16:
        raise ValueError("an eval file holds fewer than 65536 examples")
    for idx, ex in enumerate(examples):
        endings = ex["ending_tokens"]
        if len(endings) != 4:
            raise ValueError(f"example {idx}: expected 4 endings, got {len(endings)}")
        s = [EVAL_START, 0, idx, int(ex["label"]), len(endings), len(ex["ctx_tokens"]), *ex["ctx_tokens"]]
        for end in endings:
            s += [len(end), *end]
        if any(not 0 <= t < EVAL_START for t in s[5:]):
            raise ValueError(f"example {idx}: token ids must be in [0, 65535)")
        s[1] = 2 * len(s)
        if s[1] >= 2**16:
            raise ValueError(f"example {idx} is too long ({s[1]} bytes)")
        longest = max(longest, s[1])
        stream += s
    if longest == 0:
        raise ValueError("no examples to write")
    write_atomic(path, new_header(EVAL_MAGIC, EVAL_VERSION, len(examples), longest), np.array(stream, dtype="<u2"))


def read_examples(path):
    """Every example of an llm.c HellaSwag .bin, checked field by field; bad files raise UserError."""
    with open_file(path, "HellaSwag file") as f:
        header = read_header(f, path, EVAL_MAGIC, (EVAL_VERSION,), "HellaSwag eval file")
        raw = f.read()
    n = int(header[2])
    if n <= 0:
        raise UserError(f"{path}: the header says {n} examples")
    if len(raw) % 2:
        raise UserError(f"{path}: odd payload size: not a stream of uint16")
    s = np.frombuffer(raw, dtype="<u2").tolist()

    examples, i = [], 0
    for idx in range(n):
        def bad(what):
            return UserError(f"{path}: example {idx} (at uint16 {i}): {what}")
        if i + 6 > len(s):
            raise bad(f"the file ends early: the header says {n} examples, it holds {idx}")
        if s[i] != EVAL_START:
            raise bad(f"expected the start marker {EVAL_START}, found {s[i]}")
        nbytes, index, label, ncomp, ctx_len = s[i + 1:i + 6]
        if index != idx:
            raise bad(f"index field {index}, expected {idx}")
        if ncomp != NUM_COMPLETIONS:
            raise bad(f"{ncomp} endings; llm.c's format has {NUM_COMPLETIONS}")
        if not 0 <= label < ncomp:
            raise bad(f"label {label} is not an ending index 0..{ncomp - 1}")
        if ctx_len == 0:
            raise bad("empty context")
        j = i + 6
        context = s[j:j + ctx_len]
        j += ctx_len
        endings = []
        for _ in range(ncomp):
            if j >= len(s):
                raise bad("the file ends inside the example")
            end_len = s[j]
            if end_len == 0:
                raise bad("empty ending")
            endings.append(s[j + 1:j + 1 + end_len])
            j += 1 + end_len
        if j > len(s):
            raise bad("the file ends inside the example")
        if nbytes != 2 * (j - i):
            raise bad(f"byte count field {nbytes}, but its fields take {2 * (j - i)} bytes")
        examples.append(Example(idx, label, context, endings))
        i = j
    if i != len(s):
        raise UserError(f"{path}: {2 * (len(s) - i)} bytes after the {n} examples the header announces")
    return examples


def rank_block(N, rank, world_size):
    """The examples [start, end) of one process: contiguous blocks of ceil(N / world_size), as llm.c."""
    per = math.ceil(N / world_size)
    return min(N, rank * per), min(N, (rank + 1) * per)


def positions(ex):
    """The sequence length an example's longest row needs: context + ending, less the last token."""
    return len(ex.context) + max(map(len, ex.endings)) - 1


def make_batch(examples, shape=None):
    """inputs and targets (4E, T) int32 and weights (4E, T) float64, for E = len(examples): row 4e+k is
    example e's context + ending k, its last token dropped (it predicts nothing that is scored),
    zero-padded to the longest row or to `shape` (rows, T) if given; targets are the inputs shifted by
    one (the context's last token predicts the ending's first); weights are 1/len(ending) at the
    ending's positions, 0 elsewhere (the padding rows too), so a row's loss is sum(weights * losses)."""
    shape = shape or (NUM_COMPLETIONS * len(examples), max(map(positions, examples)))
    inputs = np.zeros(shape, np.int32)
    targets = np.zeros(shape, np.int32)
    weights = np.zeros(shape, np.float64)
    for e, ex in enumerate(examples):
        c = len(ex.context)
        for k, end in enumerate(ex.endings):
            r = NUM_COMPLETIONS * e + k
            row = np.array(ex.context + end, np.int32)
            inputs[r, :len(row) - 1] = row[:-1]
            targets[r, :len(row) - 1] = row[1:]
            weights[r, c - 1:c - 1 + len(end)] = 1.0 / len(end)
    return inputs, targets, weights


def completion_losses(model, inputs, targets, weights):
    """The mean cross-entropy of each row (4E,) over its ending, as a host float64 array."""
    return model.to_host(_row_losses(model, inputs, targets, weights), np.float64)


def _row_losses(model, inputs, targets, weights):
    """completion_losses, left on the device (the GPU may still be computing it). On the GPU: the model's
    validate(), whose classifier writes every position's loss (B, T) reading each row of logits once,
    then each row's weighted sum. On the CPU, where a log-sum-exp over every
    position costs more than the rest of the pass: a forward pass without targets and the log-softmax
    of the scored positions only (the same numbers)."""
    xp, V = model.xp, model.config.vocab_size
    B, T = inputs.shape
    if xp is not np:
        model.validate(inputs, targets)
        losses = model.acts["losses"][:B, :T]                                 # (B,T) -log p(target)
        return (losses * xp.asarray(weights.astype(losses.dtype, copy=False))).sum(axis=1)
    model.forward(inputs)
    rows, pos = np.nonzero(weights)                                            # the scored positions
    logits = model.logits[rows, pos, :V].astype(np.result_type(model.logits.dtype, np.float32))   # (M,V)
    m = logits.max(axis=-1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=-1))
    nll = lse - logits[np.arange(len(rows)), targets[rows, pos]]                # (M,) -log p(target)
    return np.bincount(rows, weights=nll * weights[rows, pos], minlength=B)


def evaluate(model, path, B=16, limit=None, rank=0, world_size=1, allreduce=None, progress=False):
    """(correct, total) over the file's examples (the first `limit` of them if given), this process's
    block of them when world_size > 1; allreduce(np.array([correct, total])) -> the sums over all
    processes, when given. B: rows per forward pass, a multiple of 4 is best (B // 4 examples)."""
    examples = read_examples(path)
    return evaluate_examples(model, examples[:limit], B, rank, world_size, allreduce, progress, path)


def evaluate_examples(model, examples, B=16, rank=0, world_size=1, allreduce=None, progress=False, path="HellaSwag"):
    """evaluate() on examples already read."""
    if B < NUM_COMPLETIONS:
        raise UserError(f"HellaSwag needs B >= {NUM_COMPLETIONS} rows per batch (one example), got {B}")
    check_fits(model, examples, path)        # all of them: every process fails alike, none waits in allreduce
    start, end = rank_block(len(examples), rank, world_size)
    examples = examples[start:end]
    # The model allocates its activations at its first forward, for that (B, T), and later batches must
    # fit in them. A model that has not run yet gets the largest batch first: the first batch padded
    # to B rows and the longest example's T. One that has (a training model) keeps to its B; its T
    # was checked above.
    fresh = model.batch_shape is None
    if not fresh:
        B = min(B, model.batch_shape[0])
    E = B // NUM_COMPLETIONS
    order = sorted(examples, key=positions, reverse=True)     # longest first: little padding per batch
    batches = [order[i:i + E] for i in range(0, len(order), E)]
    largest = (NUM_COMPLETIONS * E, max(map(positions, examples), default=1))

    from tqdm import tqdm
    correct = 0

    def score(batch, losses):                                  # waits for the batch's losses
        losses = model.to_host(losses, np.float64)[:NUM_COMPLETIONS * len(batch)]
        picks = losses.reshape(len(batch), NUM_COMPLETIONS).argmin(axis=1)   # ties: the first
        bar.update(len(batch))
        return int(sum(pick == ex.label for pick, ex in zip(picks, batch)))

    # the next batch is built on the host while the device still computes the one before
    with tqdm(total=len(examples), desc="HellaSwag", unit="ex", disable=not progress or rank != 0) as bar:
        pending = None
        for k, batch in enumerate(batches):
            arrays = make_batch(batch, largest if k == 0 and fresh else None)
            if pending is not None:
                correct += score(*pending)
            pending = (batch, _row_losses(model, *arrays))
        if pending is not None:
            correct += score(*pending)
    counts = np.array([correct, len(examples)], dtype=np.int64)
    if allreduce is not None:
        counts = np.asarray(allreduce(counts))
    return int(counts[0]), int(counts[1])


def check_fits(model, examples, path):
    """Token ids within the model's vocabulary, rows within its positions (and within the T of its
    activations, if it has run already); UserError otherwise."""
    if not examples:
        return
    cfg = model.config
    longest = max(map(positions, examples))
    top = max(max(ex.context + [t for end in ex.endings for t in end]) for ex in examples)
    if top >= cfg.vocab_size:
        raise UserError(f"{path}: holds token id {top}, outside the model's vocabulary of {cfg.vocab_size}")
    if longest > cfg.max_seq_len:
        raise UserError(f"{path}: an example needs {longest} positions, the model has {cfg.max_seq_len}")
    if model.batch_shape is not None and longest > model.batch_shape[1]:
        raise UserError(f"HellaSwag needs sequences of {longest} tokens, but this model's activations "
                        f"hold T={model.batch_shape[1]} (allocated at its first forward); llm.c likewise runs HellaSwag "
                        f"at the training T: train with -t {longest} or more")


def main(argv=None):
    ap = cli.ArgumentParser("python -m llmnp.hellaswag", __doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="llm.c .bin, HF GPT-2 folder/.safetensors, or training output folder")
    ap.add_argument("--data", default=DEFAULT_DATA, help=f"llm.c HellaSwag .bin [{DEFAULT_DATA}]")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: the GPU when there is one")
    ap.add_argument("--limit", type=cli.positive_int, default=None, help="only the first N examples")
    ap.add_argument("-b", "--batch-size", type=cli.positive_int, default=None,
                    help="rows per forward pass, 4 per example [512 on the GPU, 16 on the CPU]")
    args = ap.parse_args(argv)
    if args.data == DEFAULT_DATA and not os.path.exists(DEFAULT_DATA):
        raise UserError(f"{DEFAULT_DATA} not found: python data/hellaswag.py writes it (or pass --data FILE)")
    examples = read_examples(args.data)[:args.limit]      # a bad file fails before the model loads
    from llmnp.model import GPT2, pick_device
    device = pick_device(args.device)
    model = GPT2.load(args.model, device=device)
    print(f"[model: {model.source}]", file=sys.stderr)
    B = args.batch_size or (512 if device == "cuda" else 16)
    correct, total = evaluate_examples(model, examples, B=B, progress=True, path=args.data)
    print(f"HellaSwag: {correct}/{total} = {correct / total:f}")


if __name__ == "__main__":
    run_cli(main)
