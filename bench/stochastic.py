"""Stochastic samplers against the mixture: distribution distance against NFE.

fewstep's stochastic samplers (and, for reference, its deterministic default), k-diffusion's
stochastic samplers and diffusers' SDE schedulers sample the 64-dimensional, 8-component
mixture of the solver benchmark from the same noises (4096 samples), on Stable Diffusion's
VP schedule and on rectified flow. The score is the sliced Wasserstein-2 distance to 4096
exact draws from the mixture; the distance between two independent sets of exact draws is
the floor no sampler can beat. Every peer sampler is shown with its best spacing option.

    python bench/stochastic.py            # the README table and plot
    python bench/stochastic.py --quick    # a smoke run

Writes bench/results/stochastic.md, .json and .png.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

import fewstep
from fewstep.io import atomic_write_bytes, atomic_write_text
from fewstep.reference import peers as P
from fewstep.reference import problem, sliced_wasserstein
from fewstep.schedules import FlowSchedule

warnings.filterwarnings("ignore")
torch.set_num_threads(2)

NFES = (5, 10, 15, 20, 30, 50, 100)
OURS = [
    ("auto", {}),
    ("heun", {}),
    ("ddpm", {}),
    ("euler_ancestral", {}),
    ("dpmpp_2s_ancestral", {}),
    ("dpmpp_2m_sde", {}),
    ("dpmpp_3m_sde", {}),
    ("sa_solver", {}),
    ("er_sde", {}),
    ("euler", {"s_churn": 10.0}),
    ("restart", {}),
    ("restart", {"base": "auto_ode"}),
]
ODE = {"auto", "heun"}
RESTART_MIN_NFE = 15  # below this a restart leaves too few calls for the main solve
FAILURES: list[str] = []


def label(solver, options):
    return solver + "".join(f" {k}={v}" for k, v in options.items())


def _restart_options(pb, options, nfe):
    """Restart on Heun (the paper's) or on fewstep's default ODE solver, with one interval
    (sigma 0.1 -> 2): below 30 calls one restart of 5 inner calls (two Heun steps: one
    step across the interval is unstable), from 30 on two restarts of a fifth of the budget
    each. Candidates in order: where Heun cannot split the budget exactly, one inner call
    more."""
    restarts, inner = (1, 5) if nfe < 30 else (2, max(5, nfe // 5))
    out = []
    for k in (inner, inner + 1):
        opts = {"intervals": [(0.1, 2.0, restarts, k)]}
        if options.get("base") == "auto_ode":
            name, base_options, _ = fewstep.defaults.auto(pb.schedule, nfe - restarts * (k - 1))
            opts.update(base=name, base_options=base_options)
        out.append(opts)
    return out


def run_ours(pb, noise, exact, nfes, rows):
    model = pb.model()
    for solver, options in OURS:
        for nfe in nfes:
            where = f"{pb.name} fewstep {label(solver, options)} NFE {nfe}"
            if solver == "restart" and nfe < RESTART_MIN_NFE:
                FAILURES.append(f"{where}: not run below {RESTART_MIN_NFE} calls")
                continue
            tries = _restart_options(pb, options, nfe) if solver == "restart" else [options]
            for opts in tries:
                try:
                    x = fewstep.sample(
                        model,
                        noise,
                        solver=solver,
                        nfe=nfe,
                        seed=0 if _stochastic(solver, opts) else None,
                        **opts,
                    )
                    break
                except fewstep.FewstepError as err:
                    error = err
            else:
                FAILURES.append(f"{where}: {error}")
                continue
            rows.append(
                dict(
                    problem=pb.name,
                    library="fewstep",
                    sampler=label(solver, options),
                    spacing="default",
                    nfe=nfe,
                    calls=nfe,
                    sw2=sliced_wasserstein(x, exact),
                )
            )


def _stochastic(solver, options):
    return solver != "auto" and fewstep.solvers.get_solver(solver, **options).stochastic


def run_kdiffusion(pb, noise, exact, nfes, rows):
    model = pb.model()
    for name in P.KDIFFUSION_STOCHASTIC:
        per = P.KDIFFUSION_STOCHASTIC[name][2]
        for nfe in nfes:
            n = (nfe - 1) // per + 1
            if n < 2:
                continue
            for spacing, sig in P.kdiffusion_spacings(pb.schedule, n).items():
                torch.manual_seed(0)
                before = model.nfe
                try:
                    x = P.run_kdiffusion(name, model, noise, torch.cat([sig, sig.new_zeros(1)]))
                except Exception as err:
                    FAILURES.append(f"{pb.name} k-diffusion {name} {spacing} NFE {nfe}: {err}")
                    continue
                rows.append(
                    dict(
                        problem=pb.name,
                        library="k-diffusion",
                        sampler=name,
                        spacing=spacing,
                        nfe=nfe,
                        calls=model.nfe - before,
                        sw2=sliced_wasserstein(x, exact),
                    )
                )


def run_diffusers(pb, noise, exact, nfes, rows):
    model = pb.model()
    flow = isinstance(pb.schedule, FlowSchedule)
    samplers = P.DIFFUSERS_FLOW_STOCHASTIC if flow else P.DIFFUSERS_STOCHASTIC
    spacings = {"default": {}} if flow else {}
    spacings.update(
        {
            k: v
            for k, v in P.DIFFUSERS_SPACINGS.items()
            if not (flow and k in {"linspace", "leading", "trailing"})
        }
    )
    for name, (cls, config, step_options) in samplers.items():
        for spacing, extra in spacings.items():

            def make(cls=cls, config=config, extra=extra):
                return P.diffusers_scheduler(cls, pb.schedule, pb.prediction, **config, **extra)

            try:
                probe = make()
            except Exception as err:
                FAILURES.append(
                    f"{pb.name} diffusers {name} {spacing}: cannot be configured: {err}"
                )
                continue
            if any(getattr(probe.config, k, None) != v for k, v in extra.items()):
                continue  # this scheduler has no such spacing option
            for nfe in nfes:
                steps = next((s for s in range(nfe, 0, -1) if _calls(make, s) <= nfe), None)
                if steps is None:
                    continue
                torch.manual_seed(0)
                try:
                    x, calls = P.run_diffusers(make(), model, noise, steps, **step_options)
                except Exception as err:
                    FAILURES.append(f"{pb.name} diffusers {name} {spacing} NFE {nfe}: {err}")
                    continue
                if not torch.isfinite(x).all():
                    FAILURES.append(
                        f"{pb.name} diffusers {name} {spacing} NFE {nfe}: non-finite output"
                    )
                    continue
                rows.append(
                    dict(
                        problem=pb.name,
                        library="diffusers",
                        sampler=name,
                        spacing=spacing,
                        nfe=nfe,
                        calls=calls,
                        sw2=sliced_wasserstein(x, exact),
                    )
                )


def _calls(make, steps):
    s = make()
    s.set_timesteps(steps)
    return len(s.timesteps)


def best(rows, key):
    out = {}
    for r in rows:
        k = key(r)
        if k not in out or r["sw2"] < out[k]["sw2"]:
            out[k] = r
    return out


def restart_lines(prob, nfes):
    """Restart against fewstep's SDE samplers and ODE solvers at equal NFE (the Restart
    paper's claim is that it beats both)."""
    ours = [r for r in prob if r["library"] == "fewstep"]
    kinds = {
        "Restart": lambda s: s.startswith("restart"),
        "best SDE": lambda s: not s.startswith("restart") and s not in ODE,
        "Heun ODE": lambda s: s == "heun",
        "auto ODE": lambda s: s == "auto",
    }
    lines = [
        "",
        "Restart against SDE and ODE (fewstep, same NFE):",
        "",
        "| NFE | " + " | ".join(kinds) + " | Restart wins |",
        "|---" * (len(kinds) + 2) + "|",
    ]
    for n in nfes:
        cells, scores = [], {}
        for kind, pick in kinds.items():
            found = [r for r in ours if r["nfe"] == n and pick(r["sampler"])]
            if found:
                r = min(found, key=lambda r: r["sw2"])
                scores[kind] = r["sw2"]
                cells.append(f"{r['sw2']:.4f} ({r['sampler']})")
            else:
                cells.append("-")
        others = [v for k, v in scores.items() if k != "Restart"]
        wins = "-" if "Restart" not in scores else str(scores["Restart"] < min(others)).lower()
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {wins} |")
    return lines


def report(rows, floors, spreads, nfes, elapsed, args):
    lines = [
        "# Stochastic samplers: sliced W2 to exact draws",
        "",
        f"`python bench/stochastic.py{' --quick' if args.quick else ''}` ({elapsed / 60:.1f} min"
        + (
            f"; the peers' rows reused from a {args.peers_from / 60:.0f}-min run with "
            "the same inputs, `--reuse-peers`"
            if getattr(args, "peers_from", None)
            else ""
        )
        + f", "
        f"{args.samples} samples, mixture of dimension {args.dim} with 8 components). Sliced "
        "Wasserstein-2 distance (512 directions) between the samples and as many exact draws; "
        "each peer sampler at its best spacing option; NFE counts every model call.",
    ]
    for name in sorted(floors):
        prob = [r for r in rows if r["problem"] == name]
        per = best(prob, lambda r: (r["library"], r["sampler"], r["nfe"]))
        samplers = sorted({(r["library"], r["sampler"]) for r in prob})
        lines += [
            "",
            f"## {name} (floor: independent sets of exact draws differ by {floors[name]:.4f}, "
            f"{spreads[name][0]:.4f} to {spreads[name][1]:.4f} over 4 pairs: differences "
            "of that size are sampling noise)",
            "",
            "| sampler | " + " | ".join(str(n) for n in nfes) + " |",
            "|---" * (len(nfes) + 1) + "|",
        ]
        for lib, s in samplers:
            cells = [f"{per[(lib, s, n)]['sw2']:.4f}" if (lib, s, n) in per else "-" for n in nfes]
            lines.append(f"| {lib} {s} | " + " | ".join(cells) + " |")
        peers = best([r for r in prob if r["library"] != "fewstep"], lambda r: r["nfe"])
        ours = best([r for r in prob if r["library"] == "fewstep"], lambda r: r["nfe"])
        lines += ["", "Best at each NFE:", ""]
        for n in nfes:
            if n in peers and n in ours:
                lines.append(
                    f"- NFE {n}: fewstep `{ours[n]['sampler']}` {ours[n]['sw2']:.4f}; peer "
                    f"{peers[n]['library']} `{peers[n]['sampler']}` ({peers[n]['spacing']}) "
                    f"{peers[n]['sw2']:.4f}"
                )
        lines += restart_lines(prob, nfes)
    if FAILURES:
        grouped = defaultdict(list)
        for f in FAILURES:
            head, _, reason = f.partition(": ")
            config, _, nfe = head.rpartition(" NFE ")
            grouped[(config or head, reason)].append(nfe)
        lines += ["", "## Runs that failed (reported, not scored)", ""]
        lines += [
            f"- {c} (NFE {', '.join(n for n in ns if n)}): {r[:200]}"
            for (c, r), ns in grouped.items()
        ]
    return "\n".join(lines) + "\n"


def plot(rows, floors, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(floors)
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        per = best(
            [r for r in rows if r["problem"] == name],
            lambda r: (r["library"], r["sampler"], r["nfe"]),
        )
        curves = defaultdict(dict)
        for (lib, s, n), r in per.items():
            curves[(lib, s)][n] = r["sw2"]
        for (lib, s), pts in sorted(curves.items()):
            xs = sorted(pts)
            style = "-o" if lib == "fewstep" else ("--" if lib == "diffusers" else ":")
            lw = 2.2 if lib == "fewstep" and ("restart" in s or s == "auto") else 1.0
            ax.loglog(xs, [pts[n] for n in xs], style, lw=lw, ms=3, label=f"{lib} {s}", alpha=0.85)
        ax.axhline(floors[name], color="k", lw=0.8, ls="-.", label="exact vs exact")
        ax.set_title(f"{name}: sliced W2 to exact draws")
        ax.set_xlabel("NFE")
        ax.set_ylabel("sliced W2")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument(
        "--reuse-peers",
        action="store_true",
        help="take the peers' rows from the last run's JSON (same inputs and seeds, so the "
        "same numbers) and rerun only fewstep's samplers",
    )
    args = parser.parse_args()
    nfes = (10, 30) if args.quick else NFES
    if args.quick:
        args.samples, args.dim = 256, 16
    out = Path(args.out)
    suffix = "_quick" if args.quick else ""
    start = time.perf_counter()
    rows, floors, spreads = [], {}, {}
    if args.reuse_peers:
        previous = json.loads((out / f"stochastic{suffix}.json").read_text())
        if previous.get("setting") != [args.samples, args.dim, list(nfes)]:
            parser.error("--reuse-peers: the last run used other samples, dim or NFEs")
        rows = [r for r in previous["rows"] if r["library"] != "fewstep"]
        FAILURES.extend(f for f in previous["failures"] if " fewstep " not in f)
        args.peers_from = previous["elapsed"]
    for name in ("gmm-vp", "gmm-flow"):
        pb = problem(name, dim=args.dim, components=8, seed=0)
        noise = pb.noise(args.samples, seed=0, dtype=torch.float32)
        exact = pb.gmm.sample(args.samples, seed=100)
        baseline = [
            sliced_wasserstein(pb.gmm.sample(args.samples, seed=101 + k), exact) for k in range(4)
        ]
        floors[name] = sum(baseline) / len(baseline)
        spreads[name] = (min(baseline), max(baseline))
        run_ours(pb, noise, exact, nfes, rows)
        print(f"[{name}] fewstep done ({time.perf_counter() - start:.0f} s)", flush=True)
        if not args.reuse_peers:
            run_kdiffusion(pb, noise, exact, nfes, rows)
            run_diffusers(pb, noise, exact, nfes, rows)
            print(f"[{name}] peers done ({time.perf_counter() - start:.0f} s)", flush=True)
    elapsed = time.perf_counter() - start
    atomic_write_text(
        out / f"stochastic{suffix}.json",
        json.dumps(
            {
                "rows": rows,
                "floors": floors,
                "spreads": spreads,
                "failures": FAILURES,
                "setting": [args.samples, args.dim, list(nfes)],
                "elapsed": getattr(args, "peers_from", elapsed),
            }
        ),
    )
    text = report(rows, floors, spreads, nfes, elapsed, args)
    atomic_write_text(out / f"stochastic{suffix}.md", text)
    plot(rows, floors, out / f"stochastic{suffix}.png")
    print(text)


if __name__ == "__main__":
    main()
