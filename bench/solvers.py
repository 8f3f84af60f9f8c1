"""Side-by-side solver benchmark on the exact Gaussian-mixture problems.

fewstep's deterministic solvers (on each of its spacings) and every deterministic sampler of
diffusers and k-diffusion (on each of their spacing options) integrate the probability-flow
ODE of a 64-dimensional, 8-component mixture from the same noises with exactly matched
starting states, at each NFE budget; every model call is counted (a two-call sampler gets
the step count that fits the budget). Errors are RMSE against the exact ODE solution.
Then the per-step overhead of each library on the same algorithm, with a model that costs
nothing, in the same process.

    python bench/solvers.py                      # the full run (README tables)
    python bench/solvers.py --quick              # a smoke run

Writes bench/results/solvers.md, solvers.json and solvers.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

import fewstep
from fewstep.io import atomic_write_bytes, atomic_write_text
from fewstep.reference import peers as P
from fewstep.reference import problem, rmse
from fewstep.schedules import FlowSchedule

warnings.filterwarnings("ignore")
torch.set_num_threads(2)

NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)
FAILURES: list[str] = []  # peer runs that raised or returned NaN: reported, never dropped
PROBLEMS = ("gmm-vp", "gmm-flow")

FEWSTEP_SOLVERS = [
    ("ddim", {}),
    ("dpmpp_2m", {}),
    ("dpmpp_2m", {"warmup": "singlestep"}),
    ("dpmpp_3m", {}),
    ("dpmpp_3m", {"solver_type": "midpoint"}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
    ("dpmpp_2s", {}),
    ("dpmpp_3s", {}),
    ("deis", {}),
    ("deis", {"variant": "logrho"}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 3}),
    ("unipc", {"order": 3, "variant": "bh1"}),
    ("dpmpp_2m", {"corrector": "unic"}),
    ("deis", {"variant": "logrho", "corrector": "unic"}),
    ("ipndm", {}),
    ("pndm", {}),
    ("euler", {}),
    ("heun", {}),
    ("dpm2", {}),
    ("lms", {}),
]
FEWSTEP_SPACINGS = {
    "vp": ["logsnr", "karras", "time_uniform", "time_quadratic", "linspace", "trailing"],
    "flow": ["flow_shift", "time_quadratic"],
}


def label(solver: str, options: dict) -> str:
    return solver + "".join(f" {k}={v}" for k, v in options.items())


def _rmse(x, ref) -> tuple[float, float]:
    e = rmse(x, ref)
    return float(e.mean()), float(e.median())


def run_fewstep(pb, noise, ref, nfes, rows, quick):
    model = pb.model()
    family = "flow" if isinstance(pb.schedule, FlowSchedule) else "vp"
    solvers = FEWSTEP_SOLVERS[:6] if quick else FEWSTEP_SOLVERS
    for solver, options in [("auto", {}), *solvers]:
        for spacing in [None] if solver == "auto" else FEWSTEP_SPACINGS[family]:
            for nfe in nfes:
                start = time.perf_counter()
                try:
                    x = fewstep.sample(
                        model, noise, solver=solver, nfe=nfe, spacing=spacing, **options
                    )
                except fewstep.FewstepError:
                    continue
                mean, median = _rmse(x, ref)
                rows.append(
                    dict(
                        problem=pb.name,
                        library="fewstep",
                        sampler=label(solver, options),
                        spacing=spacing or "auto",
                        nfe=nfe,
                        calls=nfe,
                        mean=mean,
                        median=median,
                        seconds=time.perf_counter() - start,
                    )
                )


def _kd_n_for_budget(name, budget):
    per = P.KDIFFUSION_SAMPLERS[name][2]
    return (budget - 1) // per + 1


def run_kdiffusion(pb, noise, ref, nfes, rows, measure=None):
    """Every k-diffusion sampler at every spacing and budget; ``measure(x)`` adds fields."""
    model = pb.model()
    for name in P.KDIFFUSION_SAMPLERS:
        for nfe in nfes:
            n = _kd_n_for_budget(name, nfe)
            if n < 2:
                continue
            for spacing, sig in P.kdiffusion_spacings(pb.schedule, n).items():
                sigmas = torch.cat([sig, sig.new_zeros(1)])
                before = model.nfe
                start = time.perf_counter()
                try:
                    x = P.run_kdiffusion(name, model, noise, sigmas)
                except Exception as err:
                    FAILURES.append(f"{pb.name} k-diffusion {name} {spacing} NFE {nfe}: {err}")
                    continue
                calls = model.nfe - before
                mean, median = _rmse(x, ref)
                rows.append(
                    dict(
                        problem=pb.name,
                        library="k-diffusion",
                        sampler=name,
                        spacing=spacing,
                        nfe=nfe,
                        calls=calls,
                        mean=mean,
                        median=median,
                        seconds=time.perf_counter() - start,
                        **(measure(x) if measure else {}),
                    )
                )


def _diffusers_steps_for_budget(make, budget):
    """The largest set_timesteps count whose model calls fit the budget."""
    for steps in range(budget, 0, -1):
        s = make()
        try:
            s.set_timesteps(steps)
        except Exception:
            return None
        calls = len(s.timesteps)
        if calls <= budget:
            return steps
    return None


def _accepts_grid(scheduler) -> bool:
    import inspect

    params = inspect.signature(scheduler.set_timesteps).parameters
    return "sigmas" in params or "timesteps" in params


def _with_ays(scheduler, schedule, steps):
    """The scheduler set to Align Your Steps' grid: sigmas where it takes them, else the
    (rounded) timesteps of those sigmas."""
    import inspect

    sig = P.ays_sigmas(schedule, steps)
    params = inspect.signature(scheduler.set_timesteps).parameters
    if "sigmas" in params:
        scheduler.set_timesteps(sigmas=sig.tolist())
    else:
        t = schedule.t_of_edm_sigma(sig).round().long().tolist()
        scheduler.set_timesteps(timesteps=sorted(set(t), reverse=True))
    return scheduler


def run_diffusers(pb, noise, ref, nfes, rows, measure=None):
    """Every diffusers scheduler at every spacing and budget; ``measure(x)`` adds fields."""
    model = pb.model()
    flow = isinstance(pb.schedule, FlowSchedule)
    samplers = P.DIFFUSERS_FLOW_SAMPLERS if flow else P.DIFFUSERS_SAMPLERS
    for name, (cls, config) in samplers.items():
        spacings = {"default": {}} if flow else {}
        spacings.update(
            {
                k: v
                for k, v in P.DIFFUSERS_SPACINGS.items()
                if not (flow and k in {"linspace", "leading", "trailing"})
            }
        )
        try:
            probe = P.diffusers_scheduler(cls, pb.schedule, pb.prediction, **config)
        except Exception as err:
            FAILURES.append(f"{pb.name} diffusers {name}: cannot be configured: {err}")
            continue
        if not flow and _accepts_grid(probe):
            spacings["ays"] = {}
        for spacing, extra in spacings.items():

            def make(cls=cls, config=config, extra=extra):
                return P.diffusers_scheduler(cls, pb.schedule, pb.prediction, **config, **extra)

            try:
                s = make()
            except Exception:
                continue
            if any(getattr(s.config, k, None) != v for k, v in extra.items()):
                continue  # the scheduler silently ignores this spacing option
            for nfe in nfes:
                steps = _diffusers_steps_for_budget(make, nfe)
                if steps is None:
                    continue
                start = time.perf_counter()
                try:
                    if spacing == "ays":
                        x, calls = P.run_diffusers(
                            _with_ays(make(), pb.schedule, steps), model, noise
                        )
                    else:
                        x, calls = P.run_diffusers(make(), model, noise, steps)
                except Exception as err:
                    FAILURES.append(f"{pb.name} diffusers {name} {spacing} NFE {nfe}: {err}")
                    continue
                if not torch.isfinite(x).all():
                    FAILURES.append(
                        f"{pb.name} diffusers {name} {spacing} NFE {nfe}: non-finite output"
                    )
                    mean = median = float("nan")
                else:
                    mean, median = _rmse(x, ref)
                rows.append(
                    dict(
                        problem=pb.name,
                        library="diffusers",
                        sampler=name,
                        spacing=spacing,
                        nfe=nfe,
                        calls=calls,
                        mean=mean,
                        median=median,
                        seconds=time.perf_counter() - start,
                        **(measure(x) if measure and math.isfinite(mean) else {}),
                    )
                )


# -- overhead ------------------------------------------------------------------------------

OVERHEAD_PAIRS = [
    # (fewstep solver, options, peer library, peer sampler)
    ("euler", {}, "k-diffusion", "euler"),
    ("heun", {}, "k-diffusion", "heun"),
    ("lms", {}, "k-diffusion", "lms"),
    ("dpmpp_2m", {}, "k-diffusion", "dpmpp_2m"),
    ("dpmpp_3m", {"solver_type": "heun"}, "k-diffusion", "dpmpp_3m"),
    ("ddim", {}, "diffusers", "ddim"),
    ("dpmpp_2m", {}, "diffusers", "dpmpp_2m"),
    ("unipc", {"order": 2}, "diffusers", "unipc_2"),
    ("deis", {"variant": "logrho"}, "diffusers", "deis_3"),
]


def _best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_overhead(pb, noise, steps=50, repeats=7):
    """Seconds per model call spent outside the model, with a model that returns a stored
    tensor: each library's own per-step work (coefficients, combinations, bookkeeping)."""
    out = torch.randn_like(noise) * 0.1
    free = lambda x, t, **_: out  # noqa: E731
    model = fewstep.Model(free, pb.schedule, pb.prediction)
    sched = pb.schedule
    times = fewstep.spacing.resolve_spacing(
        "karras" if not isinstance(sched, FlowSchedule) else None, sched
    ).times(sched, steps)
    sigmas = P.kdiffusion_sigmas(sched, times).to(noise.dtype)
    kd = P.kdiffusion_sampling()
    results = []
    for solver, options, library, peer in OVERHEAD_PAIRS:
        nfe_kd = P.kdiffusion_calls(peer, steps) if library == "k-diffusion" else steps
        if library == "k-diffusion":
            function, fixed, _ = P.KDIFFUSION_SAMPLERS[peer]

            def eps_denoiser(x, sigma):
                # what k-diffusion's CompVisDenoiser does around an epsilon network (its
                # sigma-to-timestep interpolation left out, in k-diffusion's favour)
                s = sigma.view(-1, *([1] * (x.ndim - 1)))
                _ = x * (s**2 + 1) ** -0.5  # the network's input
                return x + out * -s

            peer_fn = lambda function=function, fixed=fixed: getattr(kd, function)(  # noqa: E731
                eps_denoiser, noise, sigmas, disable=True, **fixed
            )
            calls = nfe_kd
        else:
            cls, config = P.DIFFUSERS_SAMPLERS[peer]

            def peer_fn(cls=cls, config=config):
                s = P.diffusers_scheduler(cls, sched, pb.prediction, **config)
                s.set_timesteps(steps)
                x = noise
                for t in s.timesteps:
                    x = s.step(out, t, s.scale_model_input(x, t), return_dict=False)[0]

            calls = steps
        ours_fn = lambda solver=solver, options=options, n=calls: fewstep.sample(  # noqa: E731
            model, noise, solver=solver, nfe=n, **options
        )
        peer_fn()
        ours_fn()
        t_peer = _best_time(peer_fn, repeats) / calls
        t_ours = _best_time(ours_fn, repeats) / calls
        results.append(
            dict(
                problem=pb.name,
                fewstep=label(solver, options),
                peer=f"{library} {peer}",
                fewstep_us=t_ours * 1e6,
                peer_us=t_peer * 1e6,
                ratio=t_ours / t_peer,
            )
        )
    return results


# -- report --------------------------------------------------------------------------------


def best_by(rows, key_fn):
    best = {}
    for r in rows:
        if not math.isfinite(r["mean"]):
            continue
        k = key_fn(r)
        if k not in best or r["mean"] < best[k]["mean"]:
            best[k] = r
    return best


def report(rows, overhead, nfes, elapsed, args) -> str:
    lines = ["# Solver benchmark: error against the exact ODE solution", ""]
    lines.append(
        f"`python bench/solvers.py{' --quick' if args.quick else ''}` ({elapsed / 60:.1f} min, "
        f"{args.samples} noises, mixture of dimension {args.dim} with {args.components} "
        "components, torch " + torch.__version__ + "). Mean RMSE per sample against the exact "
        "probability-flow ODE solution (scipy DOP853, rtol = atol = 1e-10); NFE counts every "
        "model call; each peer sampler is shown with its best spacing option at that NFE."
    )
    for name in sorted({r["problem"] for r in rows}):
        prob_rows = [r for r in rows if r["problem"] == name]
        lines += ["", f"## {name}", ""]
        header = "| sampler | " + " | ".join(f"{n}" for n in nfes) + " |"
        lines += [header, "|---" * (len(nfes) + 1) + "|"]
        auto = {r["nfe"]: r for r in prob_rows if r["sampler"] == "auto"}
        peer_best = best_by([r for r in prob_rows if r["library"] != "fewstep"], lambda r: r["nfe"])
        ours_best = best_by([r for r in prob_rows if r["library"] == "fewstep"], lambda r: r["nfe"])

        def cell(r):
            return f"{r['mean']:.2e}" if r else "-"

        lines.append(
            "| **fewstep auto** | " + " | ".join(f"**{cell(auto.get(n))}**" for n in nfes) + " |"
        )
        lines.append("| best peer | " + " | ".join(cell(peer_best.get(n)) for n in nfes) + " |")
        lines.append(
            "| best fewstep config | " + " | ".join(cell(ours_best.get(n)) for n in nfes) + " |"
        )
        lines.append(
            "| auto / best peer | "
            + " | ".join(
                f"{auto[n]['mean'] / peer_best[n]['mean']:.2f}"
                if n in auto and n in peer_best
                else "-"
                for n in nfes
            )
            + " |"
        )
        lines += ["", "Best peer at each NFE:", ""]
        for n in nfes:
            if n in peer_best:
                r = peer_best[n]
                lines.append(
                    f"- NFE {n}: {r['library']} `{r['sampler']}` with `{r['spacing']}` "
                    f"({r['calls']} calls), {r['mean']:.3e}"
                )
        lines += [
            "",
            "Every sampler at its best spacing (mean RMSE):",
            "",
            header,
            "|---" * (len(nfes) + 1) + "|",
        ]
        per = best_by(prob_rows, lambda r: (r["library"], r["sampler"], r["nfe"]))
        samplers = sorted({(r["library"], r["sampler"]) for r in prob_rows})
        for lib, s in samplers:
            lines.append(
                f"| {lib} {s} | " + " | ".join(cell(per.get((lib, s, n))) for n in nfes) + " |"
            )
    if FAILURES:
        lines += ["", "## Peer runs that failed (reported, not scored)", ""]
        grouped = defaultdict(list)
        for f in FAILURES:
            head, _, reason = f.partition(": ")
            config, _, nfe = head.rpartition(" NFE ")
            grouped[(config, reason)].append(nfe)
        lines += [
            f"- {config} (NFE {', '.join(n for n in nfes if n)}): {reason}"
            for (config, reason), nfes in grouped.items()
        ]
    if overhead:
        lines += [
            "",
            "## Per-step overhead (model calls excluded)",
            "",
            "A model returning a stored tensor; 50 steps, batch of 256 x 64 (float64), best "
            "of 7; microseconds per model call.",
            "",
            "| problem | fewstep | peer | fewstep us | peer us | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for o in overhead:
            lines.append(
                f"| {o['problem']} | {o['fewstep']} | {o['peer']} | {o['fewstep_us']:.0f} | "
                f"{o['peer_us']:.0f} | {o['ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot(rows, nfes, path):
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["problem"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        prob_rows = [r for r in rows if r["problem"] == name]
        per = best_by(prob_rows, lambda r: (r["library"], r["sampler"], r["nfe"]))
        curves = defaultdict(dict)
        for (lib, s, n), r in per.items():
            curves[(lib, s)][n] = r["mean"]
        for (lib, s), pts in sorted(curves.items()):
            xs = sorted(pts)
            if lib == "fewstep" and s == "auto":
                ax.loglog(xs, [pts[n] for n in xs], "k-o", lw=2.5, label="fewstep auto", zorder=5)
            elif lib != "fewstep":
                style = "--" if lib == "diffusers" else ":"
                ax.loglog(xs, [pts[n] for n in xs], style, lw=1, alpha=0.6, label=f"{lib} {s}")
        ax.set_title(f"{name}: error vs NFE (peers at their best spacing)")
        ax.set_xlabel("NFE (model calls)")
        ax.set_ylabel("mean RMSE vs exact")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="mixture seed")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args()
    nfes = (5, 10, 20) if args.quick else NFES
    if args.quick:
        args.samples, args.dim = 32, 16
    start = time.perf_counter()
    rows, overhead = [], []
    for name in args.problems:
        pb = problem(name, dim=args.dim, components=args.components, seed=args.seed)
        noise = pb.noise(args.samples, seed=0)
        ref = pb.reference(noise)
        print(f"[{name}] reference done ({time.perf_counter() - start:.0f} s)", flush=True)
        run_fewstep(pb, noise, ref, nfes, rows, args.quick)
        print(f"[{name}] fewstep done ({time.perf_counter() - start:.0f} s)", flush=True)
        if not args.no_peers:
            run_kdiffusion(pb, noise, ref, nfes, rows)
            run_diffusers(pb, noise, ref, nfes, rows)
            print(f"[{name}] peers done ({time.perf_counter() - start:.0f} s)", flush=True)
            if not args.quick and not isinstance(pb.schedule, FlowSchedule):
                overhead += measure_overhead(pb, noise)  # per-step work: one problem suffices
    elapsed = time.perf_counter() - start
    out = Path(args.out)
    suffix = "_quick" if args.quick else ""
    atomic_write_text(
        out / f"solvers{suffix}.json",
        json.dumps({"rows": rows, "overhead": overhead, "failures": FAILURES}),
    )
    text = report(rows, overhead, nfes, elapsed, args)
    atomic_write_text(out / f"solvers{suffix}.md", text)
    plot(rows, nfes, out / f"solvers{suffix}.png")
    print(text)


if __name__ == "__main__":
    main()
