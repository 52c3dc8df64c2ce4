"""One training step of the Skyformer repository's PyTorch LRA model, timed on request (CPU).

Run by ``python -m lra.bench.versus`` with a PyTorch environment's Python, never by the harness's
own: it imports only the standard library, PyTorch and the authors' code (their ``src/`` folder,
given with ``--code``: ``config.py``, ``models/model_LRA.py``). It builds their ``ModelForSC`` from
``Config[task]["model"]`` updated with ``extra_attn_config[attention]`` as their ``main.py`` does
(``max_seq_len`` rounded up to a power of two), float32 (their ``mixed_precision`` autocast is
CUDA-only) on the CPU, and runs what their ``step_LRA`` runs for one training batch:
``optimizer.zero_grad()``, forward, ``loss.mean().backward()``, ``clip_grad_value_(params, 1)``,
``optimizer.step()`` (AdamW, lr/betas/eps/weight decay of their ``main.py``) and the one-cycle
scheduler's ``step()``. The batch is random token ids in [1, 17) (ListOps' real vocabulary) with every
position real, and random labels, so its cost matches the harness's random batch.

``--checkpointing`` sets their attention module's ``grad_checkpointing`` (their code turns it on for
softmax); 0 times softmax without it.

Protocol: one JSON line ``{"ready": true, ...}`` once built, then one JSON line ``{"wall": s, "cpu": s}``
per ``step`` line read on stdin; any other line ends the process.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", required=True, help="the authors' src/ folder (config.py, models/)")
    parser.add_argument("--attention", required=True, help="their attn_type: softmax, nystrom, skyformer, performer")
    parser.add_argument("--checkpointing", type=int, choices=(0, 1), default=0)
    parser.add_argument("--task", default="lra-listops", help="their Config key")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--vocab-size", type=int, default=17, help="token ids drawn in [1, vocab)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return parser.parse_args(argv)


def build(args):
    code = Path(args.code)
    if not (code / "config.py").is_file() or not (code / "models" / "model_LRA.py").is_file():
        raise SystemExit(f"--code {code}: not the authors' src/ folder (config.py and models/model_LRA.py expected)")
    sys.path.insert(0, str(code))
    import torch
    from config import Config
    from models.model_LRA import ModelForSC

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_config = copy.deepcopy(Config[args.task]["model"])
    model_config.update(Config[args.task]["extra_attn_config"].get(args.attention, {}))
    model_config.update(mixed_precision=False, attn_type=args.attention, random_seed=0, device="cpu")
    model_config["max_seq_len"] = int(2 ** math.ceil(math.log2(model_config["max_seq_len"])))
    if args.length > model_config["max_seq_len"]:
        raise SystemExit(f"--length {args.length} exceeds their {model_config['max_seq_len']} positions")
    # Their inputs always fill max_seq_len (pickles padded to it) and their Nystrom reshape needs it: a
    # shorter --length (small test shapes) builds the model at that length.
    model_config["max_seq_len"] = args.length
    training = Config[args.task]["training"]
    model = ModelForSC(model_config)
    for layer in range(model_config["num_layers"]):
        getattr(model.model, f"transformer_{layer}").mha.grad_checkpointing = bool(args.checkpointing)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=training["learning_rate"], betas=(0.9, 0.999), eps=1e-6,
                                  weight_decay=training["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer=optimizer, max_lr=training["learning_rate"], pct_start=training["warmup"] / training["num_train_steps"],
        anneal_strategy=training["lr_decay"], total_steps=training["num_train_steps"])
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids_0": torch.randint(1, args.vocab_size, (args.batch, args.length), generator=generator),
             "mask_0": torch.ones(args.batch, args.length),
             "label": torch.randint(0, model_config["num_classes"], (args.batch,), generator=generator)}

    def step():
        optimizer.zero_grad()
        loss = model(**batch)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_value=1)
        optimizer.step()
        scheduler.step()
        return loss.item()

    info = {"ready": True, "params": int(sum(p.numel() for p in model.parameters())), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "shape": [args.batch, args.length],
            "max_seq_len": model_config["max_seq_len"], "checkpointing": bool(args.checkpointing)}
    return step, info


def main(argv=None):
    args = parse_args(argv)
    step, info = build(args)
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}), flush=True)


if __name__ == "__main__":
    main()
