"""``fewstep demo``: the main job, on the digits models that ship with fewstep.

From the same noise and labels, every solver samples each model at NFE 4 to 20; each
result is scored by FID against the held-out digits, by RMSE against a 500-call
DPM-Solver++(3M) teacher (discretization error with the network fixed) and by class
accuracy; the default solver is also run at several classifier-free guidance scales.
Writes sample grids, the quality-against-NFE plot and ``report.md`` / ``report.html``.

The models are measured two at a time in spawned worker processes of one thread each. On
two idle cores that is as fast as torch's two OpenMP threads, and when another process
holds a core it degrades gracefully, where OpenMP's spinning threads stall for each other
at every operation (measured: 16x slower per call).
"""

from __future__ import annotations

import io
import multiprocessing
import platform
import queue
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import ArgumentError
from .guidance import class_inputs
from .io import atomic_write_bytes
from .models import TrainedModel, load
from .noise import randn
from .quality import TEACHER_SOLVER, DigitsMetrics, digits_metrics, teacher, teacher_rmse
from .report import Report
from .sampling import sample

WORKERS = 2  # processes, one thread each (see the module docstring)
TEACHER_CHECK_SAMPLES = 20  # the teacher's own error is measured on this many samples


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs. The teacher solves from the first ``teacher_samples`` noises
    (10 per class), where the teacher RMSE is measured. ``showcase_nfe`` is the NFE of the
    sample grid and of the guidance-scale table (run with ``solver="auto"``)."""

    models: tuple[str, ...] = ("digits-unet", "digits-dit", "digits-flow")
    solvers: tuple[str, ...] = ("auto", "ddim", "heun", "dpmpp_2m", "unipc")
    nfes: tuple[int, ...] = (4, 6, 8, 10, 15, 20)
    samples: int = 400
    guidance: float = 1.0
    guidance_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    teacher_nfe: int = 500
    teacher_samples: int = 100
    showcase_nfe: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if "auto" not in self.solvers or self.showcase_nfe not in self.nfes:
            raise ArgumentError(
                "config", "the grids and guidance table need solver 'auto' at showcase_nfe"
            )
        if self.samples < 10 or self.samples % 10:
            raise ArgumentError(
                "samples", f"must be a positive multiple of 10 (one per class), got {self.samples}"
            )
        if not 10 <= self.teacher_samples <= self.samples:
            raise ArgumentError(
                "teacher_samples", f"must be in 10..samples, got {self.teacher_samples}"
            )


QUICK = DemoConfig(
    solvers=("auto", "ddim"),
    nfes=(4, 8),
    samples=40,
    guidance_scales=(1.0, 3.0),
    teacher_nfe=100,
    teacher_samples=20,
    showcase_nfe=8,
)


@dataclass
class Run:
    """One solver at one NFE: its samples, scores and wall time."""

    samples: Tensor
    fid: float
    rmse: float
    accuracy: float
    seconds: float


@dataclass
class ModelResult:
    """Everything measured on one model: the teacher, the sweep and the guidance table."""

    info: dict[str, Any]
    labels: Tensor
    teacher: Tensor
    teacher_error: float
    teacher_seconds: float
    runs: dict[tuple[str, int], Run] = field(default_factory=dict)
    guidance: dict[float, tuple[float, float]] = field(default_factory=dict)
    guidance_seconds: float = 0.0


def _calls(cfg: DemoConfig) -> int:
    per_model = 3 * cfg.teacher_nfe + len(cfg.solvers) * sum(cfg.nfes)
    per_model += cfg.showcase_nfe * sum(w != cfg.guidance for w in cfg.guidance_scales)
    return per_model * len(cfg.models)


# Progress of a worker process: (model calls, label or None) messages to the parent.
Progress = Callable[[tuple[int, str | None]], None]
_progress: Progress | None = None


def _init_worker(messages: Any) -> None:
    global _progress
    torch.set_num_threads(1)
    _progress = messages.put


def _worker(name: str, cfg: DemoConfig) -> ModelResult:
    assert _progress is not None, "run in a process started with _init_worker"
    return _measure(name, cfg, digits_metrics(), _progress)


def _measure(name: str, cfg: DemoConfig, metrics: DigitsMetrics, progress: Progress) -> ModelResult:
    """The teacher, the solver sweep and the guidance table of one model."""
    model = load(name, guidance_scale=cfg.guidance)

    def tick(*_) -> None:  # a forward hook that returns something replaces the output
        progress((1, None))

    hook = model.network.register_forward_hook(tick)
    labels = torch.arange(cfg.samples) % model.num_classes
    noise = randn((cfg.samples, *model.image_shape), cfg.seed)
    cond, uncond = class_inputs(model, labels)

    def run(m: TrainedModel, solver: str, nfe: int) -> tuple[Tensor, float]:
        progress((0, f"{name} {solver} NFE {nfe}"))
        start = time.perf_counter()
        x = sample(m, noise, solver=solver, nfe=nfe, cond=cond, uncond=uncond)
        return x, time.perf_counter() - start

    progress((0, f"{name} teacher"))
    start = time.perf_counter()
    m = cfg.teacher_samples
    first_cond, first_uncond = class_inputs(model, labels[:m])
    ref = teacher(model, noise[:m], nfe=cfg.teacher_nfe, cond=first_cond, uncond=first_uncond)
    seconds = time.perf_counter() - start
    # The teacher's own error: against twice the calls, on a few samples.
    k = min(TEACHER_CHECK_SAMPLES, m)
    few_cond, few_uncond = class_inputs(model, labels[:k])
    finer = teacher(model, noise[:k], nfe=2 * cfg.teacher_nfe, cond=few_cond, uncond=few_uncond)
    result = ModelResult(model.info, labels, ref, teacher_rmse(ref[:k], finer), seconds)
    for solver in cfg.solvers:
        for nfe in cfg.nfes:
            x, seconds = run(model, solver, nfe)
            fid, acc, error = metrics.fid(x), metrics.accuracy(x, labels), teacher_rmse(x[:m], ref)
            result.runs[solver, nfe] = Run(x, fid, error, acc, seconds)
    start = time.perf_counter()
    for w in cfg.guidance_scales:
        key = ("auto", cfg.showcase_nfe)
        if w == cfg.guidance and key in result.runs:
            x = result.runs[key].samples
        else:
            guided = TrainedModel(name, model.network, model.info, guidance_scale=w)
            x, _ = run(guided, "auto", cfg.showcase_nfe)
        result.guidance[w] = (metrics.accuracy(x, labels), metrics.fid(x))
    result.guidance_seconds = time.perf_counter() - start
    hook.remove()
    return result


# -- figures -------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write a figure as a 256-colour PNG (a third of the bytes, no visible change)."""
    from PIL import Image  # a dependency of matplotlib

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    out = io.BytesIO()
    Image.open(buf).convert("RGB").quantize(256).save(out, format="png", optimize=True)
    atomic_write_bytes(path, out.getvalue())


def _tile(rows: list[Tensor]) -> np.ndarray:
    """Rows of images (k, 1, 16, 16) as one array with 2-pixel white gaps."""
    gap = 2
    h, w = rows[0].shape[-2:]
    k = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + gap) - gap, k * (w + gap) - gap), -1.0)
    for i, row in enumerate(rows):
        for j, img in enumerate(row.clamp(-1, 1)):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = img[0]
    return out


def _grid_figure(
    panels: list[tuple[str, list[str], list[Tensor]]], path: Path, columns: int | None = None
) -> None:
    """Panels of image rows (title, row names, rows), ``columns`` panels to a figure row."""
    plt = _pyplot()
    columns = columns or len(panels)
    n_rows = max(len(rows) for _, _, rows in panels)
    n_cols = max(len(r) for _, _, rows in panels for r in rows)
    fig, axes = plt.subplots(
        -(-len(panels) // columns),
        columns,
        figsize=(
            columns * (0.34 * n_cols + 1.2),
            -(-len(panels) // columns) * (0.34 * n_rows + 0.7),
        ),
        squeeze=False,
    )
    for ax, (title, names, rows) in zip(axes.flat, panels, strict=True):
        ax.imshow(_tile(rows), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([(i + 0.5) * 18 - 1 for i in range(len(names))], names, fontsize=8)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def _sample_grid(results: dict[str, ModelResult], cfg: DemoConfig, path: Path) -> None:
    """10 classes x up to 8 samples per model, default solver at the showcase NFE."""
    per_class = min(8, cfg.samples // 10)
    panels = []
    for name, r in results.items():
        x = r.runs["auto", cfg.showcase_nfe].samples
        rows = [x[r.labels == c][:per_class] for c in range(10)]
        title = f"{name}\nauto, NFE {cfg.showcase_nfe}, w={cfg.guidance:g}"
        panels.append((title, [str(c) for c in range(10)], rows))
    _grid_figure(panels, path)


def _solver_grid(results: dict[str, ModelResult], cfg: DemoConfig, path: Path) -> None:
    """Per model, the same 10 noises (one per class) through every solver at the smallest
    NFE, the default solver at the showcase NFE, and the teacher; beside them each
    sample's distance to the teacher, times 4 (white: none, black: 0.5 or more)."""
    low = min(cfg.nfes)
    panels = []
    for name, r in results.items():
        names = [f"{s} {low}" for s in cfg.solvers] + [f"auto {cfg.showcase_nfe}", "teacher"]
        rows = [r.runs[s, low].samples[:10] for s in cfg.solvers]
        rows += [r.runs["auto", cfg.showcase_nfe].samples[:10], r.teacher[:10]]
        ref = r.teacher[:10].clamp(-1, 1)
        errors = [(4 * (x.clamp(-1, 1) - ref).abs()).clamp(max=2) - 1 for x in rows[:-1]]
        panels.append((f"{name}: samples", names, rows))
        panels.append((f"{name}: |sample - teacher| x 4", names[:-1], errors))
    _grid_figure(panels, path, columns=2)


def _quality_plot(
    results: dict[str, ModelResult], cfg: DemoConfig, floor: float, path: Path
) -> None:
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, ScalarFormatter

    fig, axes = plt.subplots(2, len(results), figsize=(4.3 * len(results), 7), squeeze=False)
    for col, (name, r) in enumerate(results.items()):
        top, bottom = axes[0, col], axes[1, col]
        for i, solver in enumerate(cfg.solvers):
            runs = [r.runs[solver, n] for n in cfg.nfes]
            style = {"marker": "o", "color": f"C{i}", "label": solver}
            top.plot(cfg.nfes, [u.fid for u in runs], **style)
            bottom.plot(cfg.nfes, [u.rmse for u in runs], **style)
        top.axhline(floor, color="k", ls="--", label="real digits (floor)")
        bottom.axhline(r.teacher_error, color="k", ls=":", label="teacher's own error")
        top.set_title(f"{name}  (w={cfg.guidance:g})")
        top.set_ylabel("FID vs held-out digits")
        bottom.set_ylabel("RMSE vs teacher")
        for ax in (top, bottom):
            ax.set_yscale("log")
            ax.set_xscale("log")
            ax.set_xticks(cfg.nfes, [str(n) for n in cfg.nfes])
            ax.minorticks_off()
            ax.set_xlabel("NFE (model calls)")
            ax.grid(True, which="both", alpha=0.3)
        top.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        top.yaxis.set_major_formatter(ScalarFormatter())
        top.legend(fontsize=7)
        bottom.legend(handles=bottom.get_lines()[-1:], fontsize=7)
    fig.tight_layout()
    _save(fig, path)


# -- the report ----------------------------------------------------------------------------


def _command(cfg: DemoConfig) -> str:
    """The ``fewstep demo`` command line that runs ``cfg``."""
    quick = (cfg.solvers, cfg.nfes) == (QUICK.solvers, QUICK.nfes)
    base = QUICK if quick else DemoConfig()
    words = ["fewstep demo", "--quick" if quick else ""]
    if cfg.samples != base.samples:
        words.append(f"--samples {cfg.samples}")
    if cfg.guidance != base.guidance:
        words.append(f"--guidance {cfg.guidance:g}")
    return " ".join(w for w in words if w)


def _report(
    results: dict[str, ModelResult],
    cfg: DemoConfig,
    metrics: DigitsMetrics,
    floors: tuple[float, float],
    seconds: float,
) -> Report:
    rep = Report("fewstep demo: few-step sampling of the shipped digits models")
    guidance = (
        "no guidance (w = 1, the conditional model alone: the scale with the best FID, see "
        "the guidance table)"
        if cfg.guidance == 1
        else f"classifier-free guidance w = {cfg.guidance:g}"
    )
    rep.paragraph(
        f"Made by `{_command(cfg)}` in {seconds:.0f} s ({WORKERS} worker processes of one "
        f"thread, {platform.machine()}). Each model samples {cfg.samples} digits, labels 0-9 "
        f"in turn, from the noise `fewstep.randn(..., seed={cfg.seed})`, with {guidance}. "
        f"The teacher is `{TEACHER_SOLVER}` with {cfg.teacher_nfe} calls from the first "
        f"{cfg.teacher_samples} of the noises. FID is the Fréchet distance in the feature "
        "space of the shipped digits classifier to the "
        "held-out test digits, which no model saw."
    )
    clf = metrics.classifier.info
    rep.paragraph(
        f"Classifier: held-out accuracy **{clf['held_out']['accuracy_test']:.1%}**. "
        f"FID floor (real train digits against the held-out digits): **{floors[0]:.2f}** with "
        f"all {len(metrics.train.images)} train digits; **{floors[1]:.2f}** with "
        f"{cfg.samples} train digits of the generated sets' class counts (mean of 5 draws), "
        "the level a perfect sampler would reach here (dashed in the plots: FID is biased "
        "upwards at a few hundred samples)."
    )
    rows = []
    for name, r in results.items():
        info = r.info
        rec, tr, ho = info["recipe"], info["training"], info["held_out"]
        rows.append(
            [
                f"`{name}`",
                rec["architecture"],
                f"{info['parameters'] / 1e6:.2f} M",
                f"{info['bytes'] / 1e6:.2f} MB",
                rec["prediction"],
                rec["schedule"],
                f"{tr['steps_done']} steps, {tr['wall_seconds'] / 60:.1f} min",
                f"{ho['denoising_loss_test']:.4f} / {ho['denoising_loss_train']:.4f}",
            ]
        )
    rep.table(
        [
            "model",
            "network",
            "parameters",
            "weights",
            "prediction",
            "schedule",
            "training",
            "denoising loss test / train",
        ],
        rows,
    )
    rep.heading("Samples")
    rep.image("samples.png", "samples of each model")
    rep.paragraph(
        f"The same ten noises through every solver at NFE {min(cfg.nfes)}, the default solver "
        f"at NFE {cfg.showcase_nfe}, and the teacher; beside them, each sample's absolute "
        "difference from the teacher's, times 4 (white: none, black: 0.5 or more on the "
        "[-1, 1] pixel scale):"
    )
    rep.image("solvers.png", "one noise per class through each solver")
    rep.heading("Quality against NFE")
    rep.image("quality_vs_nfe.png", "FID and teacher RMSE against NFE")
    if "ddim" in cfg.solvers and "euler" not in cfg.solvers:
        rep.paragraph(
            "`ddim` is the first-order solver here; fewstep's `euler` agrees with it to "
            "round-off (DDIM is Euler's method on the probability-flow ODE in x / alpha against "
            "sigma / alpha, x / (alpha + sigma) against sigma / (alpha + sigma) on rectified "
            "flow, the coordinates fewstep's Euler integrates in), so it is not run twice."
        )
    header = ["solver", *(f"NFE {n}" for n in cfg.nfes)]
    for name, r in results.items():
        rep.heading(f"`{name}`", 3)
        for label, key, fmt in (
            ("FID", "fid", "{:.2f}"),
            (
                f"RMSE against the teacher (its own error: {r.teacher_error:.1e}, against "
                f"{2 * cfg.teacher_nfe} calls)",
                "rmse",
                "{:.4f}",
            ),
            ("class accuracy", "accuracy", "{:.1%}"),
        ):
            rep.paragraph(f"**{label}**")
            rows = [
                [f"`{s}`", *(fmt.format(getattr(r.runs[s, n], key)) for n in cfg.nfes)]
                for s in cfg.solvers
            ]
            rep.table(header, rows)
    rep.heading("Guidance scale")
    rep.paragraph(
        f"Class accuracy and FID of `auto` at NFE {cfg.showcase_nfe} against the guidance "
        "scale w (w = 1: the conditional model alone)."
    )
    rep.table(
        ["model", *(f"w = {w:g}" for w in cfg.guidance_scales)],
        [
            [f"`{name}`", *(f"{a:.1%} (FID {f:.2f})" for a, f in r.guidance.values())]
            for name, r in results.items()
        ],
    )
    rep.heading("Timings")
    rows = []
    for name, r in results.items():
        calls = len(cfg.solvers) * sum(cfg.nfes)
        sweep = sum(u.seconds for u in r.runs.values())
        rows.append(
            [
                f"`{name}`",
                f"{r.teacher_seconds:.1f} s",
                f"{calls} calls, {sweep:.1f} s",
                f"{1000 * sweep / calls:.1f} ms",
                f"{r.guidance_seconds:.1f} s",
            ]
        )
    rep.table(
        ["model", f"teacher ({cfg.teacher_nfe} calls)", "solver sweep", "per call", "guidance"],
        rows,
    )
    rep.paragraph(
        f"A sweep call evaluates the network on {cfg.samples} images, {2 * cfg.samples} when "
        f"guided (conditional and unconditional halves in one batch); a teacher call on "
        f"{cfg.teacher_samples}. Total {seconds:.1f} s."
    )
    return rep


def _measure_all(cfg: DemoConfig) -> dict[str, ModelResult]:
    """``_measure`` every model in ``WORKERS`` worker processes, with one progress bar."""
    context = multiprocessing.get_context("spawn")  # fork is unsafe after OpenMP started
    messages = context.Queue()
    with (
        tqdm(total=_calls(cfg), desc="demo", unit="call") as bar,
        ProcessPoolExecutor(
            min(WORKERS, len(cfg.models)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(messages,),
        ) as pool,
    ):
        futures = {name: pool.submit(_worker, name, cfg) for name in cfg.models}
        pending = True
        while pending:
            pending = not all(f.done() for f in futures.values())
            try:
                while True:
                    calls, label = messages.get(timeout=0.2)
                    bar.update(calls)
                    if label is not None:
                        bar.set_postfix_str(label, refresh=False)
            except queue.Empty:
                pass
        return {name: f.result() for name, f in futures.items()}


def run_demo(
    out: str | Path = "out/demo", quick: bool = False, config: DemoConfig | None = None
) -> Path:
    """Run the demo (``QUICK`` settings if ``quick``, else ``config`` or the defaults) and
    write its figures and reports under ``out``; returns the HTML report's path."""
    cfg = config or (QUICK if quick else DemoConfig())
    out = Path(out)
    start = time.perf_counter()
    results = _measure_all(cfg)
    metrics = digits_metrics()
    labels = next(iter(results.values())).labels
    floors = (metrics.floor(), metrics.floor(labels))
    _sample_grid(results, cfg, out / "samples.png")
    _solver_grid(results, cfg, out / "solvers.png")
    _quality_plot(results, cfg, floors[1], out / "quality_vs_nfe.png")
    seconds = time.perf_counter() - start
    _, page = _report(results, cfg, metrics, floors, seconds).write(out)
    return page
