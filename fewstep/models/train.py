"""``fewstep train NAME``: train a shipped model from its recipe, deterministically.

Everything random (initialisation, batches, timesteps, noise, class dropout, shifts)
comes from the seed, for a fixed number of steps, on one CPU thread: torch's results
depend on its thread count, and one thread makes them independent of the machine's core
count and immune to the ~50x stall of spinning OpenMP threads when another process holds
a core. So the same command with the same torch on the same CPU type gives the same
bytes, which the json's sha256 records.
AdamW with linear warm-up and cosine decay, gradient clipping at 1, and an exponential
moving average of the weights (what is saved). Generators: classifier-free guidance
training (the label is replaced by the null class with probability ``class_dropout``);
VP models regress epsilon or v at integer timesteps uniform in 0..999, the flow model
regresses the velocity eps - x0 at t ~ U(0, 1).
"""

from __future__ import annotations

import copy
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import ArgumentError
from .data import NUM_CLASSES, load_digits
from .specs import Recipe, build_network, build_schedule, recipe
from .store import fingerprint, save

THREADS = 1  # see the module docstring
EVAL_DRAWS = 8  # (t, noise) draws per image in the held-out denoising loss


class _EMA:
    """Exponential moving average of a network's parameters and buffers."""

    def __init__(self, network: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(
            self.shadow.state_dict().values(), network.state_dict().values(), strict=True
        ):
            if s.is_floating_point():
                s.lerp_(p, 1 - d)
            else:
                s.copy_(p)


def _lr_factor(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return (step + 1) / r.warmup
    progress = (step - r.warmup) / max(1, r.steps - r.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _batches(n: int, batch_size: int, g: torch.Generator):
    """Endless minibatch indices, one shuffled pass over the data after another."""
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


class _DiffusionLoss:
    """x_t and the regression target of a generator's parameterization."""

    def __init__(self, r: Recipe):
        self.prediction = r.prediction
        self.flow = r.schedule == "flow"
        if not self.flow:
            ac = build_schedule(r.schedule).alphas_cumprod
            self.alpha = ac.sqrt().float()
            self.sigma = (1 - ac).sqrt().float()

    def __call__(self, network, x0: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
        b = x0.shape[0]
        eps = torch.randn(x0.shape, generator=g)
        if self.flow:
            t = torch.rand(b, generator=g)
            tt = t.view(b, 1, 1, 1)
            xt, target = (1 - tt) * x0 + tt * eps, eps - x0
        else:
            step = torch.randint(0, len(self.alpha), (b,), generator=g)
            a, s = self.alpha[step].view(b, 1, 1, 1), self.sigma[step].view(b, 1, 1, 1)
            xt = a * x0 + s * eps
            target = eps if self.prediction == "epsilon" else a * eps - s * x0
            t = step.float()
        return F.mse_loss(network(xt, t, y), target)


def _shift(x: Tensor, max_shift: int, g: torch.Generator) -> Tensor:
    """Random translations by up to ``max_shift`` pixels (background-padded)."""
    b, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, b), generator=g).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def _objective(r: Recipe) -> str:
    if r.prediction is None:
        return f"cross-entropy, random shifts up to {r.extra['max_shift']} pixels"
    if r.schedule == "flow":
        return "MSE of the velocity eps - x0 at t ~ U(0, 1), x_t = (1 - t) x0 + t eps"
    target = "epsilon" if r.prediction == "epsilon" else "v = alpha eps - sigma x0"
    return f"MSE of {target} at integer timesteps uniform in 0..999 ({r.schedule} betas)"


@torch.no_grad()
def _heldout_generator(network, r: Recipe) -> dict[str, float]:
    """The training loss (conditional, no dropout) of the EMA network on the held-out split
    and on as many train images, each with EVAL_DRAWS fixed (t, noise) draws: the gap
    shows how much the network fits its train images rather than the distribution."""
    loss_fn = _DiffusionLoss(r)
    test = load_digits("test")
    train = load_digits("train")
    out = {}
    for split, data in (("test", test), ("train", train)):
        g = torch.Generator().manual_seed(1)
        x, y = data.images[: len(test.images)], data.labels[: len(test.images)]
        losses = [loss_fn(network, x, y, g).item() for _ in range(EVAL_DRAWS)]
        out[f"denoising_loss_{split}"] = sum(losses) / len(losses)
    return out


@torch.no_grad()
def _heldout_classifier(network) -> dict[str, float]:
    return {
        f"accuracy_{split}": (network(d.images).argmax(1) == d.labels).float().mean().item()
        for split, d in (("test", load_digits("test")), ("train", load_digits("train")))
    }


def train(
    name: str,
    out: str | Path = "out/models",
    *,
    seed: int = 0,
    steps: int | None = None,
    minutes: float | None = None,
    progress: bool = True,
) -> Path:
    """Train ``name`` from its recipe on the digits train split and write
    ``out/NAME.safetensors`` and ``out/NAME.json``; returns the json's path.

    ``steps`` overrides the recipe's step count (the learning-rate schedule follows it);
    ``minutes`` stops early at that wall-clock time, which makes the result depend on the
    machine's speed (the json records the steps actually taken).
    """
    r = recipe(name)
    if steps is not None:
        if steps < 1:
            raise ArgumentError("steps", f"must be positive, got {steps}")
        r = Recipe(**{**r.as_dict(), "steps": int(steps)})
    if minutes is not None and not minutes > 0:
        raise ArgumentError("minutes", f"must be positive, got {minutes}")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _train(name, r, out, seed, steps, minutes, progress)
    finally:
        torch.set_num_threads(threads)


def _train(name, r: Recipe, out, seed, steps, minutes, progress) -> Path:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    network = build_network(r.architecture, r.network).train()
    ema = _EMA(network, r.ema_decay)
    opt = torch.optim.AdamW(network.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, r))
    data = load_digits("train")
    loss_fn = _DiffusionLoss(r) if r.prediction is not None else None
    batches = _batches(len(data.images), r.batch_size, g)
    start = time.perf_counter()
    running = None
    done = 0
    with tqdm(total=r.steps, desc=f"train {name}", disable=not progress, mininterval=2) as bar:
        for step in range(r.steps):
            idx = next(batches)
            x, y = data.images[idx], data.labels[idx]
            if loss_fn is not None:
                drop = torch.rand(len(y), generator=g) < r.class_dropout
                loss = loss_fn(network, x, torch.where(drop, NUM_CLASSES, y), g)
            else:
                loss = F.cross_entropy(network(_shift(x, r.extra["max_shift"], g)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.update(network, step)
            done = step + 1
            running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
            bar.update()
            if minutes is not None and time.perf_counter() - start > 60 * minutes:
                break
    seconds = time.perf_counter() - start
    final = ema.shadow
    heldout = _heldout_generator(final, r) if loss_fn is not None else _heldout_classifier(final)
    info: dict[str, Any] = {
        "name": name,
        "recipe": r.as_dict(),
        "parameters": sum(p.numel() for p in final.parameters()),
        "training": {
            "command": f"fewstep train {name} --seed {seed}"
            + (f" --steps {steps}" if steps is not None else ""),
            "seed": seed,
            "steps_done": done,
            "stopped_early": done < r.steps,
            "wall_seconds": round(seconds, 1),
            "final_loss_ema": running,
            "threads": THREADS,
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
            "data": "sklearn load_digits, stratified 80/20 split (seed 0), train part only",
            "objective": _objective(r),
        },
        "held_out": heldout,
        "check": fingerprint(final, r.schedule),
    }
    return save(name, final.state_dict(), info, out)
