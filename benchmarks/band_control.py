"""Stage-2 band control: % of steps in the speaker-accuracy band and steps to reach it.

Compares, on the simulated plant (`indextts_ray/tune/plant.py`), the seed recipe's fixed values (λ 1, speaker
weight 0.1), the band controller with its default gains, and the controller with gains tuned by Ray Tune on
other plant seeds than the ones reported. With --tiny-model it runs real Stage-2 trainings of the tiny model on
2 local CPU workers instead (fixed vs controller vs the best trial of an `indextts-ray tune` search).

    .venv/bin/python benchmarks/band_control.py
    .venv/bin/python benchmarks/band_control.py --tiny-model --steps 60
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from indextts_ray.ray_connect import connect  # noqa: E402
from indextts_ray.tune.config import BandControlConfig  # noqa: E402
from indextts_ray.tune.controller import BandController  # noqa: E402
from indextts_ray.tune.plant import PlantSettings, SimulatedPlant, simulate  # noqa: E402

SCENARIOS = {"start 90%": PlantSettings(start_acc=0.9), "start 10%": PlantSettings(start_acc=0.1),
             "start 90%, slow+noisy": PlantSettings(start_acc=0.9, lag=80, delay=20, noise=0.15)}
GAINS = ("kp_lambda", "ki_lambda", "kp_weight", "ki_weight")


def plant_run(settings: PlantSettings, seed: int, steps: int, band: BandControlConfig | None) -> tuple[float, float]:
    """(% of all steps with the true accuracy in band, steps to the first in-band step; NaN if never)."""
    controller = BandController(band, 1.0, 0.1) if band is not None else None
    rows = simulate(SimulatedPlant(settings, seed), steps, controller)
    lo, hi = (band or BandControlConfig()).low, (band or BandControlConfig()).high
    inside = [lo <= r["true_acc"] <= hi for r in rows]
    first = next((r["step"] for r, x in zip(rows, inside) if x), float("nan"))
    return 100.0 * sum(inside) / len(inside), first


def tune_gains(steps: int, samples: int, seeds: list[int]) -> dict:
    """Ray Tune random search over the controller gains and margin on `seeds` (not the reported ones)."""
    from ray import tune

    def trial(config: dict) -> None:
        band = BandControlConfig(**config)
        scores = [plant_run(s, seed, steps, band)[0] for s in SCENARIOS.values() for seed in seeds]
        tune.report({"in_band": statistics.mean(scores)})

    from ray.tune.search.basic_variant import BasicVariantGenerator

    space = {k: tune.loguniform(0.1, 10.0) for k in GAINS} | {"margin": tune.uniform(0.0, 0.45)}
    connect(local={"num_cpus": 2, "include_dashboard": False}, log_to_driver=False)  # never a stale Ray
    with tempfile.TemporaryDirectory() as tmp:
        grid = tune.Tuner(
            tune.with_resources(trial, {"cpu": 1}), param_space=space,
            tune_config=tune.TuneConfig(metric="in_band", mode="max", num_samples=samples,
                                        search_alg=BasicVariantGenerator(random_state=0)),
            run_config=tune.RunConfig(storage_path=tmp, name="plant", verbose=0),
        ).fit()
        return grid.get_best_result().config


def plant_benchmark(args) -> None:
    t0 = time.perf_counter()
    tuned = tune_gains(args.steps, args.samples, seeds=[100, 101, 102])
    tune_s = time.perf_counter() - t0
    methods = {"fixed λ=1 w=0.1": None, "controller (defaults)": BandControlConfig(),
               "controller (Tune-tuned)": BandControlConfig(**tuned)}
    print(f"tuned gains ({args.samples} trials, {tune_s:.0f}s): "
          + " ".join(f"{k}={v:.3g}" for k, v in sorted(tuned.items())))
    print(f"\nplant, {args.steps} steps, seeds 0-{args.seeds - 1} (mean; steps-to-band over the runs that got there)")
    print(f"{'scenario':<24}{'method':<26}{'% steps in band':>16}{'steps to band':>15}")
    for scenario, settings in SCENARIOS.items():
        for method, band in methods.items():
            runs = [plant_run(settings, seed, args.steps, band) for seed in range(args.seeds)]
            reached = [t for _, t in runs if t == t]
            to_band = f"{statistics.mean(reached):.0f}" if reached else "never"
            print(f"{scenario:<24}{method:<26}{statistics.mean(p for p, _ in runs):>16.1f}{to_band:>15}")


def tiny_model_benchmark(args) -> None:
    """Real Stage-2 runs of the tiny model (needs `train.band` in the training config)."""

    from indextts_ray.config import load_config
    from indextts_ray.train.tracking import read_metrics
    from indextts_ray.train.trainer import run_training
    from indextts_ray.tune.score import band_score, band_windows
    from indextts_ray.tune.search import run_tune

    out = Path(tempfile.mkdtemp(prefix="band-bench-"))
    data = args.data
    if data is None:
        from tests.train.conftest import write_dataset

        data = write_dataset(out / "prepared")
    common = [f"train.data_dir={data}", f"run.output_dir={out}", "train.init_checkpoint=null",
              f"train.speaker_mapping={Path(data) / 'speaker_mapping.json'}", f"train.max_steps={args.steps}",
              "train.batch.max_tokens=400", "train.logging.every_steps=1", f"train.eval_every_steps={args.steps}",
              f"train.checkpoint.every_steps={args.steps}", "train.warmup_steps=2"]
    connect(local={"num_cpus": 2, "include_dashboard": False}, log_to_driver=False)  # never a stale Ray
    t0 = time.perf_counter()
    search = run_tune(load_config(REPO / "configs/tune/demo.yaml", [
        *common, "run.name=search", f"tune.max_steps={args.steps}", f"tune.num_samples={args.tiny_samples}",
        f"tune.window_steps={args.window}", f"tune.grace_steps={args.window * 2}"]))
    print(f"tune search: {len(search.rows)} trials in {time.perf_counter() - t0:.0f}s, best {search.best_trial}")
    runs = {"fixed λ=1 w=0.1": ["train.band.enabled=false", "train.grl_lambda=1.0", "train.loss.speaker=0.1"],
            "controller (defaults)": ["train.grl_lambda=1.0", "train.loss.speaker=0.1"]}
    print(f"\ntiny model, {args.steps} steps, windows of {args.window} steps")
    print(f"{'method':<26}{'% windows in band':>18}{'steps to band':>15}{'mel increase':>14}")
    band = load_config(REPO / "configs/tune/demo.yaml").train.band
    for method, overrides in runs.items():
        cfg = load_config(REPO / "configs/tune/demo.yaml", [*common, f"run.name={method.split()[0]}", *overrides])
        run_training(cfg)
        _print_run(method, band_score(band_windows(read_metrics(out / cfg.run.name), args.window),
                                      band.low, band.high, 1.0))
    best = next(r for r in search.rows if r["trial"] == search.best_trial)
    _print_run("controller (Tune-tuned)", band_score(band_windows(read_metrics(out / "search" / "runs" / best["run"]),
                                                                  args.window), band.low, band.high, 1.0))


def _print_run(method: str, s: dict) -> None:
    to_band = "never" if s["steps_to_band"] != s["steps_to_band"] else f"{s['steps_to_band']:.0f}"
    print(f"{method:<26}{100 * s['in_band']:>18.1f}{to_band:>15}{s['mel_increase']:>14.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="plant steps (or tiny-model steps with --tiny-model)")
    p.add_argument("--seeds", type=int, default=5, help="plant seeds reported")
    p.add_argument("--samples", type=int, default=40, help="Tune trials for the plant gains")
    p.add_argument("--tiny-model", action="store_true", help="also run real tiny-model Stage-2 trainings")
    p.add_argument("--tiny-samples", type=int, default=4, help="Tune trials on the tiny model")
    p.add_argument("--window", type=int, default=10, help="tiny model: evaluation window (steps)")
    p.add_argument("--data", type=Path, default=None, help="tiny model: a prepared dataset (default: a tiny one)")
    args = p.parse_args()
    print(f"device: {platform.processor() or platform.machine()} (CPU), python {platform.python_version()}")
    if args.tiny_model:
        tiny_model_benchmark(args)
    else:
        plant_benchmark(args)


if __name__ == "__main__":
    main()
