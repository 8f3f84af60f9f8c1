"""Tuner benchmark: tuned fewstep at NFE n against untuned fewstep and the best peer sampler
at n and at 2n, on held-out noises, with the calibration cost.

- gmm: the solver benchmark's exact mixtures (SD ``scaled_linear`` VP with epsilon
  prediction; rectified flow with velocity), mean RMSE against the exact ODE solution on
  8192 held-out noises; peers are every deterministic diffusers and k-diffusion sampler at
  its best spacing option (``bench/solvers.py``'s harness, run here in the same process);
- unseen: the same on a mixture of another dimension, component count and seed;
- transfer: a configuration tuned on one mixture applied to the other one at the same NFE
  (an analytic first step's Gaussian refitted to the other mixture's calibration samples:
  data statistics belong to a model, the times, orders and coefficients are what transfers);
- digits: the embedded ``digits-unet`` with guidance, FID (classifier features, held-out
  digits) of tuned NFE 5 against every untuned solver at NFE 5 to 10, a configuration
  tuned at one guidance scale applied at another, the tuner calibrated on half the classes
  and scored on the other half, and the tuner fitted to held-out noises themselves (what
  calibration data matching the test exactly would give);
- models: tuned NFE 5 against every untuned solver at NFE 5 to 10 on each embedded digits
  model (UNet epsilon, DiT v, UNet flow) at guidance 1, with paired-bootstrap intervals on
  the FID differences.

    python bench/tuner.py                  # the full run (README table)
    python bench/tuner.py --quick          # a smoke run

Writes bench/results/tuner{_quick}.md, .json and .png. The exact ODE solutions are solved
once and kept in bench/.cache/references (delete it to solve them afresh).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import solvers as S

import fewstep
from fewstep.analytic import GaussianData
from fewstep.guidance import class_inputs
from fewstep.io import atomic_write_bytes, atomic_write_text
from fewstep.reference import problem, rmse
from fewstep.tuner import refit_first_step
from fewstep.tuner.tune import DRAWS

torch.set_num_threads(2)

SECTIONS = ("mixtures", "digits", "models")
DIGITS_MODELS = ("digits-unet", "digits-dit", "digits-flow")
OUTPUTS = ("tuned", "auto", "auto_2n")
UNSEEN = dict(dim=32, components=4, seed=7)
#: exact references kept on disk between runs (delete the folder to solve them afresh)
REFERENCES = Path(__file__).parent / ".cache" / "references"
DIGITS_NFES = range(5, 11)  # untuned budgets: which one the tuned NFE 5 matches
SEEN_CLASSES = 5  # the held-out-classes run calibrates on digits 0-4, scores 5-9
DIGITS_SOLVERS = ("auto", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "deis")


def _held_out(x, ref) -> float:
    return float(rmse(x, ref).mean())


def _sem(errors) -> float:
    """Standard error of the mean of per-noise errors."""
    return float(errors.std() / len(errors) ** 0.5)


def _paired_z(errors, peer_errors) -> float:
    """The mean per-noise difference over its standard error: both samplers ran from the same
    noises, so the noises' shared difficulty cancels (negative where the first is better)."""
    d = errors - peer_errors
    return float(d.mean() / (d.std() / len(d) ** 0.5))


def _wrong_modes(x, ref, gmm) -> int:
    """Samples whose nearest mixture mean is not the exact solution's: a trajectory that
    crossed to another mode (an error of the size of the gap between modes)."""
    means = gmm.means.to(x)
    return int((torch.cdist(x, means).argmin(1) != torch.cdist(ref.to(x), means).argmin(1)).sum())


def _tune(model, nfe, cal, target, args, cond=None, uncond=None):
    calls = model.nfe
    config = fewstep.tune(
        model,
        nfe,
        calibration=cal,
        cond=cond,
        uncond=uncond,
        target=target,
        iterations=args.iterations,
        draws=args.draws,
        progress=False,
    )
    return config, model.nfe - calls


def gmm_rows(name, nfes, args, **mixture):
    """Tuned, untuned and best-peer mean RMSE at each NFE n (peers also at 2n)."""
    pb = problem(name, **mixture, cache_dir=REFERENCES)
    model = pb.model()
    noise, cal = pb.noise(args.samples, seed=0), pb.noise(args.calibration, seed=11)
    start = time.perf_counter()
    ref, ref_cal = pb.reference(noise), pb.reference(cal)
    reference_seconds = time.perf_counter() - start
    peer_rows: list[dict] = []
    budgets = sorted({k for n in nfes for k in (n, 2 * n)})

    def measure(x):
        errors = rmse(x, ref)
        return {"modes": _wrong_modes(x, ref, pb.gmm), "sem": _sem(errors), "errors": errors}

    S.run_kdiffusion(pb, noise, ref, budgets, peer_rows, measure)
    S.run_diffusers(pb, noise, ref, budgets, peer_rows, measure)
    peers = S.best_by(peer_rows, lambda r: r["nfe"])
    rows, configs = [], {}
    for n in nfes:
        start = time.perf_counter()
        config, calls = _tune(model, n, cal, ref_cal, args)
        seconds = time.perf_counter() - start
        configs[n] = config
        outputs = {
            "tuned": fewstep.sample(model, noise, config=config),
            "auto": fewstep.sample(model, noise, nfe=n),
            "auto_2n": fewstep.sample(model, noise, nfe=2 * n),
        }
        measured = {k: measure(x) for k, x in outputs.items()}
        rows.append(
            dict(
                problem=pb.name,
                mixture=mixture,
                nfe=n,
                **{k: float(m["errors"].mean()) for k, m in measured.items()},
                **{f"{k}_median": float(m["errors"].median()) for k, m in measured.items()},
                **{f"{k}_{f}": m[f] for k, m in measured.items() for f in ("modes", "sem")},
                peer=peers[n]["mean"],
                peer_name=f"{peers[n]['library']} {peers[n]['sampler']} ({peers[n]['spacing']})",
                peer_2n=peers[2 * n]["mean"],
                peer_2n_median=peers[2 * n]["median"],
                peer_2n_modes=peers[2 * n]["modes"],
                peer_2n_sem=peers[2 * n]["sem"],
                z=_paired_z(measured["tuned"]["errors"], peers[2 * n]["errors"]),
                peer_2n_name=(
                    f"{peers[2 * n]['library']} {peers[2 * n]['sampler']} "
                    f"({peers[2 * n]['spacing']})"
                ),
                solver=config.solver,
                orders=config.options.get("orders"),
                grid=config.meta["grid"],
                first_step=config.meta["first_step"],
                calibration_calls=calls,
                calibration_seconds=seconds,
            )
        )
        print(
            f"[{pb.name} {mixture or ''}] NFE {n}: tuned {rows[-1]['tuned']:.3e} "
            f"auto {rows[-1]['auto']:.3e} peer@2n {rows[-1]['peer_2n']:.3e} "
            f"({calls} calls, {seconds:.0f} s)",
            flush=True,
        )
    return rows, configs, (model, noise, ref, ref_cal), reference_seconds


def transfer_rows(configs_a, target_b, label):
    """A configuration tuned on mixture A sampling mixture B, against B's plain solver."""
    model, noise, ref, ref_cal = target_b
    rows = []
    for n, config in configs_a.items():
        if config.gaussian is not None:
            config = replace(config, gaussian=GaussianData.fit(ref_cal).record())
        rows.append(
            dict(
                case=label,
                nfe=n,
                transferred=_held_out(fewstep.sample(model, noise, config=config), ref),
                auto=_held_out(fewstep.sample(model, noise, nfe=n), ref),
            )
        )
    return rows


def compare_on_digits(model, labels, metrics, args) -> dict:
    """The 500-call teacher, every untuned solver at NFE 5 to 10 and the tuner's NFE 5 on one
    digits model from the same noises: FID, and RMSE and Frechet distance to the teacher; the
    tuned FID minus the best untuned NFE 10 FID and minus the teacher's, with paired-bootstrap
    intervals."""
    from fewstep.quality import frechet_difference, frechet_distance, teacher

    noise = fewstep.randn((len(labels), *model.image_shape), seed=1000)
    cond, uncond = class_inputs(model, labels)
    reference = teacher(model, noise, cond=cond, uncond=uncond)
    reference_features = metrics.features(reference)
    info = dict(model=model.name, guidance=model.guidance.scale)

    def scored(x):
        # the distance to the teacher's own samples from the same noises: a sampler's error
        # at the level of the distribution, where FID against data mixes in the model's
        features = metrics.features(x)
        return features, dict(
            fid=frechet_distance(features, metrics.reference),
            rmse=_held_out(x, reference),
            fd_teacher=frechet_distance(features, reference_features),
        )

    untuned, tens = [], {}
    for solver in DIGITS_SOLVERS:
        for n in DIGITS_NFES:
            x = fewstep.sample(model, noise, solver=solver, nfe=n, cond=cond, uncond=uncond)
            features, scores = scored(x)
            untuned.append(dict(**info, solver=solver, nfe=n, **scores))
            if n == 10:
                tens[solver] = features
    best_10 = min((r for r in untuned if r["nfe"] == 10), key=lambda r: r["fid"])["solver"]
    start = time.perf_counter()
    cal = fewstep.randn((args.digits_calibration, *model.image_shape), seed=2000)
    cal_labels = torch.arange(args.digits_calibration) % 10
    config, calls = _tune(model, 5, cal, None, args, *class_inputs(model, cal_labels))
    seconds = time.perf_counter() - start
    x = fewstep.sample(model, noise, config=config, cond=cond, uncond=uncond)
    features, scores = scored(x)
    tuned = dict(
        **info,
        nfe=5,
        **scores,
        fid_best_10=best_10,
        fid_minus_best_10=frechet_difference(features, tens[best_10], metrics.reference),
        fid_minus_teacher=frechet_difference(features, reference_features, metrics.reference),
        accuracy=metrics.accuracy(x, labels),
        first_step=config.meta["first_step"],
        calibration_calls=calls,
        calibration_seconds=seconds,
    )
    print(f"[{model.name} w={model.guidance.scale:g}] tuned NFE 5: {tuned}", flush=True)
    teacher_fid = frechet_distance(reference_features, metrics.reference)
    return dict(
        untuned=untuned,
        tuned=tuned,
        teacher=teacher_fid,
        config=config,
        noise=noise,
        reference=reference,
        scored=lambda x: scored(x)[1],
    )


def digits_rows(args):
    """Tuned NFE 5 against every untuned solver at NFE 5 to 10 on digits-unet at each guidance
    scale; then transfer across guidance, held-out classes and the tuner fitted to test noises."""
    from fewstep.models import load
    from fewstep.quality import digits_metrics

    metrics = digits_metrics()
    per_class = args.digits_samples // 10
    labels = torch.arange(10).repeat_interleave(per_class)
    results = {
        "untuned": [],
        "tuned": [],
        "transfer": [],
        "in_sample": [],
        "held_out_classes": [],
        "teacher": {},
        "floor": metrics.floor(labels),
    }
    runs = {}
    for scale in args.guidance:
        model = load("digits-unet", guidance_scale=scale)
        runs[scale] = run = compare_on_digits(model, labels, metrics, args)
        results["untuned"] += run["untuned"]
        results["tuned"].append(run["tuned"])
        results["teacher"][scale] = run["teacher"]
        noise, reference = run["noise"], run["reference"]
        tens = [r for r in run["untuned"] if r["nfe"] == 10]
        best_untuned_10 = min(tens, key=lambda r: r["rmse"])["solver"]
        results["held_out_classes"].append(
            held_out_classes(
                model, noise, labels, reference, run["config"], best_untuned_10, metrics, args
            )
        )
        print(f"[digits w={scale}] unseen classes: {results['held_out_classes'][-1]}", flush=True)
        results["in_sample"].append(
            fitted_to_test(model, noise, labels, reference, run["config"], best_untuned_10, args)
        )
        print(f"[digits w={scale}] tuned on test noises: {results['in_sample'][-1]}", flush=True)
    for tuned_at, tuned in runs.items():
        for scale, run in runs.items():
            if scale != tuned_at:
                model = load("digits-unet", guidance_scale=scale)
                cond, uncond = class_inputs(model, labels)
                x = fewstep.sample(
                    model, run["noise"], config=tuned["config"], cond=cond, uncond=uncond
                )
                results["transfer"].append(
                    dict(tuned_at=tuned_at, guidance=scale, **run["scored"](x))
                )
    return results


def model_rows(args):
    """Tuned NFE 5 against every untuned solver at NFE 5 to 10 on each embedded digits model
    at guidance 1 (each model's conditional prediction, unguided)."""
    from fewstep.models import load
    from fewstep.quality import digits_metrics

    metrics = digits_metrics()
    labels = torch.arange(10).repeat_interleave(args.digits_samples // 10)
    results = {"untuned": [], "tuned": [], "teacher": {}, "floor": metrics.floor(labels)}
    for name in args.models:
        run = compare_on_digits(load(name), labels, metrics, args)
        results["untuned"] += run["untuned"]
        results["tuned"].append(run["tuned"])
        results["teacher"][name] = run["teacher"]
    return results


def held_out_classes(
    model, noise, labels, reference, config, untuned_solver, metrics, args
) -> dict:
    """The tuner calibrated on digits 0-4 only, scored on the held-out noises of digits 5-9
    (RMSE and Frechet distance to the teacher's samples of those classes), beside the
    configuration calibrated on every class, plain auto at 5 calls and the best untuned
    10-call solver on the same noises. An analytic first step falls back to the seen
    classes' mean for a class it has no mean of; refitted (``refit_first_step``) to the
    tuning teacher's samples of every class from the calibration noises (data statistics, no
    tuning), it separates what the class means cost from what the times and coefficients
    do."""
    from fewstep.quality import frechet_distance

    cal = fewstep.randn((args.digits_calibration, *model.image_shape), seed=2000)
    cal_labels = torch.arange(args.digits_calibration) % SEEN_CLASSES
    start = time.perf_counter()
    seen, calls = _tune(model, 5, cal, None, args, *class_inputs(model, cal_labels))
    seconds = time.perf_counter() - start
    pick = labels >= SEEN_CLASSES
    x, target = noise[pick], reference[pick]
    cond, uncond = class_inputs(model, labels[pick])
    target_features = metrics.features(target)

    def scored(**how) -> dict:
        out = fewstep.sample(model, x, cond=cond, uncond=uncond, **how)
        return dict(
            rmse=_held_out(out, target),
            fd_teacher=frechet_distance(metrics.features(out), target_features),
        )

    refit = None
    if seen.gaussian is not None:  # the teacher of every class is the tuning's, cached
        every, every_uncond = class_inputs(model, torch.arange(args.digits_calibration) % 10)
        refit = scored(config=refit_first_step(model, seen, cal, cond=every, uncond=every_uncond))
    return dict(
        guidance=model.guidance.scale,
        samples=int(pick.sum()),
        tuned_seen=scored(config=seen),
        tuned_seen_refit=refit,
        tuned_all=scored(config=config),
        auto_5=scored(nfe=5),
        untuned_10=scored(solver=untuned_solver, nfe=10),
        untuned_solver=untuned_solver,
        first_step=seen.meta["first_step"],
        calls=calls,
        seconds=seconds,
    )


def fitted_to_test(model, noise, labels, reference, config, untuned_solver, args) -> dict:
    """The tuner fitted to a subset of the held-out noises themselves (train = test, their
    teacher samples as the target), beside the calibrated configuration and the best untuned
    10-call solver on the same noises: what calibration data that matched the test exactly
    would give. Not a held-out result."""
    step = len(labels) // args.test_fit_samples
    pick = torch.arange(0, len(labels), step)[: args.test_fit_samples]
    x, target = noise[pick], reference[pick]
    cond, uncond = class_inputs(model, labels[pick])
    start = time.perf_counter()
    fitted, calls = _tune(model, 5, x, target, args, cond, uncond)
    seconds = time.perf_counter() - start

    def error(**how) -> float:
        return _held_out(fewstep.sample(model, x, cond=cond, uncond=uncond, **how), target)

    return dict(
        guidance=model.guidance.scale,
        samples=len(pick),
        in_sample=error(config=fitted),
        tuned=error(config=config),
        untuned_10=error(solver=untuned_solver, nfe=10),
        untuned_solver=untuned_solver,
        calls=calls,
        seconds=seconds,
    )


def _fmt(v: float) -> str:
    return f"{v:.2e}"


def _made_by(meta: dict) -> str:
    return (
        f"`{meta['command']}`: {meta['minutes']:.1f} min on 2 CPU cores; "
        f"{meta['calibration']} calibration noises, {meta['iterations']} gradient steps"
        + (f", {meta['draws']} draws per minibatch descent." if "draws" in meta else ".")
    )


def _best_untuned(rows: list[dict], by: str) -> dict:
    """The best untuned row per (``by``, NFE, metric) for FID, RMSE and distance to the
    teacher; ``by`` is the guidance scale or the model."""
    best = {}
    for r in rows:
        for metric in ("fid", "rmse", "fd_teacher"):
            key = (r[by], r["nfe"], metric)
            if key not in best or r[metric] < best[key][metric]:
                best[key] = r
    return best


def _interval(difference: list[float]) -> str:
    point, low, high = difference
    return f"{point:+.2f} ({low:+.2f} to {high:+.2f})"


def _digits_measures(section: dict) -> str:
    """What a digits section's samples and metrics are."""
    return (
        f"{section['meta']['digits_samples']} samples (equal classes). FID: classifier features "
        "against the held-out test digits (real-data floor at this size and class mix: "
        f"{section['floor']:.2f}). RMSE and Frechet distance: to the 500-call teacher from the "
        f"same noises. Best untuned: the best of {', '.join(DIGITS_SOLVERS)} for that metric."
    )


def _fid_intervals(tuned: list[dict], by: str, teacher: dict) -> list[str]:
    """The tuned NFE 5 FID against the best untuned NFE 10 FID and the teacher's, with the
    paired-bootstrap 95% intervals of the differences."""
    lines = [
        f"| {by} | tuned NFE 5 FID | best untuned NFE 10 FID | tuned minus it (95% interval) | "
        "teacher FID | tuned minus the teacher (95% interval) |",
        "|---|---|---|---|---|---|",
    ]
    for t in tuned:
        best_10 = t["fid"] - t["fid_minus_best_10"][0]
        lines.append(
            f"| {t[by]:{'g' if by == 'guidance' else ''}} | {t['fid']:.2f} | "
            f"{best_10:.2f} ({t['fid_best_10']}) | {_interval(t['fid_minus_best_10'])} | "
            f"{teacher[str(t[by])]:.2f} | {_interval(t['fid_minus_teacher'])} |"
        )
    return lines


def _matching_nfe(best: dict, key, value: float, metric: str = "rmse") -> str:
    """The fewest untuned calls whose best solver's ``metric`` is at most ``value``."""
    for n in DIGITS_NFES:
        row = best[(key, n, metric)]
        if row[metric] <= value:
            return f"{n} ({row['solver']})"
    return f"more than {DIGITS_NFES[-1]}"


def _five_ten(best: dict, key, metric: str, spec: str) -> str:
    """The best untuned ``metric`` at 5 and at 10 calls, with the solvers that reach them."""
    rows = [best[(key, n, metric)] for n in (5, 10)]
    return " / ".join(f"{r[metric]:{spec}} ({r['solver']})" for r in rows)


def report(sections: dict) -> str:
    lines = ["# Tuner benchmark", ""]
    mixtures, digits, models = (sections.get(k) for k in SECTIONS)
    gmm, unseen, transfer = (
        (mixtures["gmm"], mixtures["unseen"], mixtures["transfer"]) if mixtures else ([], [], [])
    )
    if mixtures:
        lines += [
            _made_by(mixtures["meta"]) + f" Errors on {mixtures['meta']['samples']} held-out "
            "noises: mean RMSE against the exact ODE solution"
            + (
                f" ({mixtures['reference_seconds']:.0f} s of the run solved or read "
                "those solutions, kept in bench/.cache/references between runs)."
                if "reference_seconds" in mixtures
                else "."
            ),
            "",
        ]
    for title, rows in (("Exact mixtures", gmm), ("A mixture the tuner was not built on", unseen)):
        if not rows:
            continue
        lines += [
            f"## {title}",
            "",
            "| problem | NFE n | tuned @ n | auto @ n | best peer @ n | auto @ 2n | "
            "best peer @ 2n | tuned / peer@2n | z | calibration |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            mix = r["mixture"]
            name = r["problem"] + (f" (d={mix['dim']}, K={mix['components']})" if mix else "")
            lines.append(
                f"| {name} | {r['nfe']} | **{_fmt(r['tuned'])}** ± {r['tuned_sem']:.1e} | "
                f"{_fmt(r['auto'])} | {_fmt(r['peer'])} | {_fmt(r['auto_2n'])} | "
                f"{_fmt(r['peer_2n'])} ± {r['peer_2n_sem']:.1e} | "
                f"{r['tuned'] / r['peer_2n']:.2f} | {r['z']:+.1f} | "
                f"{r['calibration_calls']} calls, {r['calibration_seconds']:.0f} s |"
            )
        lines += [
            "",
            "± one standard error of the mean over the held-out noises; z: the mean of the "
            "per-noise differences tuned - peer@2n over its standard error (paired: both ran "
            "from the same noises), negative where tuned is better.",
        ]
        lines += [
            "",
            "Tuned samplers: "
            + "; ".join(
                f"{r['problem']} n={r['nfe']}: {r['solver']} orders {r['orders']}, "
                f"{r['grid']} grid start, {r['first_step']} first step"
                for r in rows
            ),
            "",
            "Best peers at 2n: "
            + "; ".join(f"{r['problem']} {2 * r['nfe']}: {r['peer_2n_name']}" for r in rows),
            "",
            "Median RMSE, and in brackets the held-out samples that end nearest another "
            "mixture mean than the exact solution does (an error the size of the gap between "
            "modes, which dominates the mean):",
            "",
            "| problem | NFE n | tuned @ n | auto @ n | auto @ 2n | best peer @ 2n |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['problem']} | {r['nfe']} | "
            + " | ".join(
                f"{_fmt(r[k + '_median'])} [{r[k + '_modes']}]" for k in (*OUTPUTS, "peer_2n")
            )
            + " |"
            for r in rows
        ]
        lines.append("")
    if transfer:
        lines += [
            "## Transfer across models",
            "",
            "| tuned on -> applied to | NFE | transferred config | plain auto |",
            "|---|---|---|---|",
        ]
        note = (
            "An analytic first step's Gaussian is refitted to the target mixture's "
            "calibration samples (data statistics belong to a model; times, orders and "
            "coefficients transfer)."
        )
        lines += [
            f"| {r['case']} | {r['nfe']} | {_fmt(r['transferred'])} | {_fmt(r['auto'])} |"
            for r in transfer
        ]
        lines += ["", note, ""]
    if digits:
        best = _best_untuned(digits["untuned"], "guidance")
        lines += [
            "## Embedded digits-unet",
            "",
            _made_by(digits["meta"]),
            "",
            _digits_measures(digits),
            "",
            "| guidance | teacher FID | tuned NFE 5 FID | best untuned NFE 5 / 10 FID | "
            "tuned NFE 5 RMSE | best untuned NFE 5 / 10 RMSE | untuned NFE for the tuned RMSE | "
            "tuned accuracy | calibration |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for t in digits["tuned"]:
            w = t["guidance"]
            lines.append(
                f"| {w:g} | {digits['teacher'][str(w)]:.2f} | **{t['fid']:.2f}** | "
                f"{_five_ten(best, w, 'fid', '.2f')} | **{t['rmse']:.4f}** | "
                f"{_five_ten(best, w, 'rmse', '.4f')} | {_matching_nfe(best, w, t['rmse'])} | "
                f"{t['accuracy']:.3f} | "
                f"{t['calibration_calls']} calls, {t['calibration_seconds']:.0f} s |"
            )
        lines += [
            "",
            "First step of the tuned samplers: "
            + ", ".join(f"{t['first_step']} (guidance {t['guidance']:g})" for t in digits["tuned"])
            + ".",
            "",
            "Frechet distance to the teacher's samples from the same noises (classifier "
            "features; 0 for the teacher itself):",
            "",
            "| guidance | tuned NFE 5 | best untuned NFE 5 / 10 | untuned NFE for the tuned "
            "distance |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {t['guidance']:g} | **{t['fd_teacher']:.3f}** | "
            f"{_five_ten(best, t['guidance'], 'fd_teacher', '.3f')} | "
            f"{_matching_nfe(best, t['guidance'], t['fd_teacher'], 'fd_teacher')} |"
            for t in digits["tuned"]
        ]
        if digits.get("in_sample"):
            lines += [
                "",
                "The tuner fitted to "
                f"{digits['in_sample'][0]['samples']} of the held-out noises themselves (train "
                "= test, their teacher samples as the target; not a held-out result), RMSE on "
                "those noises:",
                "",
                "| guidance | tuned on them (in-sample) | tuned on the calibration noises | "
                "best untuned NFE 10 |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {b['guidance']:g} | {b['in_sample']:.4f} | {b['tuned']:.4f} | "
                f"{b['untuned_10']:.4f} ({b['untuned_solver']}) |"
                for b in digits["in_sample"]
            ]
        if digits.get("held_out_classes"):
            lines += [
                "",
                f"Held-out classes: the tuner calibrated on digits 0-{SEEN_CLASSES - 1} only "
                f"(the same {digits['meta']['calibration']} noises), scored on the "
                f"{digits['held_out_classes'][0]['samples']} held-out samples of digits "
                f"{SEEN_CLASSES}-9; RMSE / Frechet distance to the teacher there:",
                "",
                f"| guidance | tuned on digits 0-{SEEN_CLASSES - 1} | the same, every digit's "
                "mean refitted | tuned on every digit | auto NFE 5 | "
                f"best untuned NFE 10 | calibration (0-{SEEN_CLASSES - 1}) |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {h['guidance']:g} | "
                + " | ".join(
                    f"{h[k]['rmse']:.4f} / {h[k]['fd_teacher']:.3f}" if h[k] else "no analytic step"
                    for k in ("tuned_seen", "tuned_seen_refit", "tuned_all", "auto_5")
                )
                + f" | {h['untuned_10']['rmse']:.4f} / {h['untuned_10']['fd_teacher']:.3f} "
                f"({h['untuned_solver']}) | {h['calls']} calls, {h['seconds']:.0f} s |"
                for h in digits["held_out_classes"]
            ]
        if digits["transfer"]:
            lines += [
                "",
                "| tuned at guidance | sampled at | FID | RMSE | best untuned NFE 5 RMSE there |",
                "|---|---|---|---|---|",
            ]
            for r in digits["transfer"]:
                lines.append(
                    f"| {r['tuned_at']:g} | {r['guidance']:g} | {r['fid']:.2f} | "
                    f"{r['rmse']:.4f} | {best[(r['guidance'], 5, 'rmse')]['rmse']:.4f} |"
                )
        lines += [
            "",
            "The tuned NFE 5 FID against the best untuned NFE 10 FID and the teacher's, "
            "with paired-bootstrap 95% intervals on the differences:",
            "",
            *_fid_intervals(digits["tuned"], "guidance", digits["teacher"]),
        ]
        lines.append("")
    if models:
        best = _best_untuned(models["untuned"], "model")
        lines += [
            "## Every embedded digits model",
            "",
            _made_by(models["meta"]),
            "",
            "Guidance 1 (each model's conditional prediction). "
            + _digits_measures(models)
            + " FID differences: paired bootstrap over the samples (the same noises for both "
            "samplers) and over the held-out digits.",
            "",
            *_fid_intervals(models["tuned"], "model", models["teacher"]),
            "",
            "| model | tuned NFE 5 RMSE | best untuned NFE 5 / 10 RMSE | untuned NFE for the "
            "tuned RMSE | tuned distance to the teacher | best untuned NFE 5 / 10 | untuned NFE "
            "for the tuned distance | first step | calibration |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {t['model']} | **{t['rmse']:.4f}** | {_five_ten(best, t['model'], 'rmse', '.4f')} "
            f"| {_matching_nfe(best, t['model'], t['rmse'])} | **{t['fd_teacher']:.3f}** | "
            f"{_five_ten(best, t['model'], 'fd_teacher', '.3f')} | "
            f"{_matching_nfe(best, t['model'], t['fd_teacher'], 'fd_teacher')} | "
            f"{t['first_step']} | {t['calibration_calls']} calls, "
            f"{t['calibration_seconds']:.0f} s |"
            for t in models["tuned"]
        ]
        lines.append("")
    return "\n".join(lines)


def plot(gmm, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["problem"] for r in gmm})
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in gmm if r["problem"] == name and not r["mixture"]]
        n = [r["nfe"] for r in rows]
        ax.loglog(n, [r["tuned"] for r in rows], "k-o", lw=2.5, label="fewstep tuned @ n")
        ax.loglog(n, [r["auto"] for r in rows], "b-s", label="fewstep auto @ n")
        ax.loglog(n, [r["peer"] for r in rows], "r--^", label="best peer @ n")
        ax.loglog(n, [r["peer_2n"] for r in rows], "r:v", label="best peer @ 2n")
        ax.set_xticks(n, [str(k) for k in n])
        ax.minorticks_off()
        ax.set_title(f"{name}: held-out error against NFE")
        ax.set_xlabel("NFE n (model calls)")
        ax.set_ylabel("mean RMSE vs exact")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_mixtures(args) -> dict:
    """The exact mixtures, the unseen mixture and transfer between them."""
    gmm, unseen, transfer, seen, reference_seconds = [], [], [], {}, 0.0
    for name in ("gmm-vp", "gmm-flow"):
        rows, configs, target, seconds = gmm_rows(name, args.nfes, args)
        gmm += rows
        seen[name] = (configs, target)
        reference_seconds += seconds
    rows, configs, target, seconds = gmm_rows("gmm-vp", args.nfes[:2], args, **UNSEEN)
    unseen += rows
    reference_seconds += seconds
    own, seen_target = seen["gmm-vp"]
    transfer += transfer_rows(own, target, "gmm-vp -> unseen mixture")
    transfer += transfer_rows(configs, seen_target, "unseen mixture -> gmm-vp")
    return dict(gmm=gmm, unseen=unseen, transfer=transfer, reference_seconds=reference_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nfes", type=int, nargs="+", default=[5, 6, 8, 10])
    # the mean error is dominated by rare samples that cross to another mode (up to 2.3% of
    # them): fewer held-out noises leave each mean to a handful of such events
    parser.add_argument("--samples", type=int, default=8192)
    # 512 calibration noises held 0.6-3 of those samples per tuned VP sampler: with thousands the
    # descent (in minibatches, at the same cost per step) and its held-out check see them
    parser.add_argument("--calibration", type=int, default=4096)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--draws", type=int, default=DRAWS, help="fewstep.tune's draws")
    parser.add_argument("--digits-samples", type=int, default=1000)
    parser.add_argument("--digits-calibration", type=int, default=64)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--test-fit-samples", type=int, default=100)
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DIGITS_MODELS),
        choices=DIGITS_MODELS,
        help="the models section's models",
    )
    parser.add_argument(
        "--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, help="what to run"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.quick:
        args.nfes, args.samples, args.calibration, args.iterations = [5], 64, 32, 20
        args.digits_calibration = 32
        args.digits_samples, args.guidance, args.test_fit_samples = 200, [1.0, 2.0], 20
        args.models = ["digits-flow"]
    out = Path(args.out)
    suffix = "_quick" if args.quick else ""
    command = "python bench/tuner.py " + " ".join(sys.argv[1:])
    for section in args.sections:
        start = time.perf_counter()
        data = {"mixtures": run_mixtures, "digits": digits_rows, "models": model_rows}[section](
            args
        )
        data["meta"] = dict(
            command=command.strip(),
            minutes=(time.perf_counter() - start) / 60,
            calibration=args.calibration if section == "mixtures" else args.digits_calibration,
            iterations=args.iterations,
            samples=args.samples,
            digits_samples=args.digits_samples,
            # digits calibrate on fewer noises than a minibatch: one descent per start
            **({"draws": args.draws} if section == "mixtures" else {}),
        )
        atomic_write_text(out / f"tuner_{section}{suffix}.json", json.dumps(data, indent=1))
    # the report joins every section's latest results
    sections = {
        name: json.loads(path.read_text())
        for name in SECTIONS
        if (path := out / f"tuner_{name}{suffix}.json").exists()
    }
    text = report(sections)
    atomic_write_text(out / f"tuner{suffix}.md", text)
    if "mixtures" in sections:
        plot(sections["mixtures"]["gmm"], out / f"tuner{suffix}.png")
    print(text)


if __name__ == "__main__":
    main()
