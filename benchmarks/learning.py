"""Does a run learn what each stage is for? The whole recipe on a corpus the tests never see, then the numbers.

    python benchmarks/learning.py --work /tmp/learning            # 15-50 min on 2 cores, by load (rerun = resume/skip)
    python benchmarks/learning.py --work /tmp/learning --stage2 train.epochs=20 pipeline.eval.n_prompts=16

Synthesises a corpus with its own seed (`--seed 7`; the tests use seed 0) of `--speakers` voices x `--utts`
utterances, 7 emotions, ko + en, and runs the demo pipeline on it (`configs/pipeline/demo.yaml` with the demo
stage configs: synth -> prepare -> speakers -> Stage 1 -> 2 -> 3 -> export -> eval with emotion control) on local
Ray with the tiny model. On top of the demo recipe (`RECIPE`): 256 builtin codes with the prosody channels weighted
30x in the k-means distance (codes that keep pitch and loudness levels; the tiny model's code vocabulary grown to
match: `number_mel_codes` 258 with start/stop 256/257), code judges whose embedding starts from the codebook's
code vectors (`pipeline.eval.emotion_control.judge_code_vectors`, 40 epochs), Stage 2 for 16 epochs. `--stageN
KEY=VALUE` appends overrides to stage N's config (after the recipe's); plain `KEY=VALUE` arguments override the
pipeline config. Everything it prints comes from the pipeline's own evaluation (`report.json`) or the
runs' own logs, except the baseline, which it computes here:

* **log-mel baseline**: the same probe (`probes.linear_probe`, same seed, same clips, hence the same split) on
  66 plain statistics of each probed clip's audio: the mean and standard deviation of each of 32 log-mel bands
  (`builtin.log_mel`), the voiced share (frames within 30 dB of the clip's loudest) and seconds per character.
  A conditioner that scores below it loses information trivial features carry.
* **stop / length**: greedy and top-p sampling (`{stage}_stop_rate`, `{stage}_topp_stop_rate`, ...): greedy
  decoding of a small model collapses into repeated codes, top-p is the decoding IndexTTS2's inference uses.
* **band**: share of Stage-2 logged steps (after the first 20 %) whose controller reading (`band_acc`, the
  speaker accuracy the band controller acts on) lies in [low, high], and the same for the raw per-step accuracy.

Ends with `key=value` lines (one per metric; `stageN_` prefixes) for scripts and the README table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROBE_KEYS = ("emotion_from_emovec", "speaker_from_emovec", "speaker_from_latents")
CODES = 256  # builtin k-means codes; the tiny model's code vocabulary = CODES + start + stop
MODEL = [f"model.number_mel_codes={CODES + 2}", f"model.start_mel_token={CODES}", f"model.stop_mel_token={CODES + 1}"]
# the recipe on top of the demo configs (module doc): pipeline overrides, and each stage's own overrides
RECIPE = [*MODEL, f"data.features.codebook_size={CODES}", "data.features.prosody_weight=30",
          "pipeline.eval.emotion_control.judge_code_vectors=true", "pipeline.eval.emotion_control.epochs=40"]
STAGE_RECIPE = {1: [], 2: ["train.epochs=16"], 3: []}


def pipeline_config(work: Path, seed: int, speakers: int, utts: int, overrides: list[str],
                    stage_overrides: dict[int, list[str]] | None = None):
    from indextts_ray.config import CONFIGS_DIR, load_config

    stage_overrides = stage_overrides or {}
    stages = []
    for n in (1, 2, 3):
        stages.append(f"pipeline.stage{n}.config={CONFIGS_DIR / 'demo' / f'stage{n}.yaml'}")
        # a JSON list is a YAML flow list whose items may hold `=`, `,` and spaces
        stages.append(f"pipeline.stage{n}.overrides="
                      + json.dumps([*MODEL, *STAGE_RECIPE[n], *stage_overrides.get(n, [])]))
    return load_config(CONFIGS_DIR / "pipeline" / "demo.yaml", [
        f"pipeline.work_dir={work}", *stages,
        f"pipeline.synth.seed={seed}", f"pipeline.synth.speakers={speakers}",
        f"pipeline.synth.utts_per_speaker={utts}", "pipeline.speakers.min_samples=5",
        "pipeline.eval.emotion_control.speakers=4", "pipeline.eval.emotion_control.texts=4",
        "pipeline.eval.n_prompts=32", *RECIPE,
        *overrides])


def clip_statistics(wav16k: np.ndarray, n_chars: int, n_mels: int = 32) -> np.ndarray:
    """66 plain statistics of one clip: band means and stds of its log-mel, voiced share, seconds per character."""
    from indextts_ray.data.features.builtin import log_mel

    m = log_mel(wav16k, n_mels)  # (T, n_mels)
    energy = np.log(np.exp(m).sum(axis=1))  # (T,) frame log energy
    voiced = float(np.mean(energy > energy.max() - math.log(1e3)))  # within 30 dB of the loudest frame
    return np.concatenate([m.mean(0), m.std(0), [voiced, len(wav16k) / 16_000 / max(n_chars, 1)]])


def logmel_baseline(cfg, lay) -> dict:
    """The probes of `report.json` on plain log-mel statistics of the same clips (module doc)."""
    import soundfile as sf

    from indextts_ray.data.audio import resample
    from indextts_ray.eval.heldout import MAX_CLIP_FRAMES, light_rows, split_files
    from indextts_ray.eval.probes import linear_probe
    from indextts_ray.model.config import EMOTION_LABELS

    ev = cfg.pipeline.eval
    # the same clips in the same order as the eval's split_clips (ids sorted, seeded sample above the cap)
    rows = light_rows(split_files(lay.prepared, tuple(ev.probe_splits)))
    ids = rows.column("id").to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(ids, kind="stable")
    if len(order) > ev.max_probe_clips:
        order = order[np.sort(np.random.default_rng(0).choice(len(order), ev.max_probe_clips, replace=False))]
    manifest = {r["id"]: r for r in map(json.loads, (lay.corpus / "manifest.jsonl").read_text().splitlines())}
    x, speakers, emotions = [], [], []
    for i in order:
        r = manifest[ids[i]]
        wav, sr = sf.read(lay.corpus / r["audio_path"], dtype="float32")
        wav = resample(wav, sr, 16_000)[: MAX_CLIP_FRAMES * 320]  # the probe sees at most the first 15 s too
        x.append(clip_statistics(wav, len(r["text"])))
        speakers.append(r["speaker"])
        emotions.append(r["emotion"])
    x = np.stack(x)
    return {"emotion": linear_probe(x, emotions, seed=0, label_order=EMOTION_LABELS),
            "speaker": linear_probe(x, speakers, seed=0)}


def band_shares(metrics_file: Path, low: float, high: float, skip: float = 0.2) -> dict:
    """Share of logged Stage-2 steps after the first `skip` of the run with the controller reading / the raw
    per-step speaker accuracy in [low, high]."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "speaker_acc" in r and r.get("speaker_weight", 0) > 0]
    if not rows:
        return {}
    total = max(r.get("total_steps", r["step"]) for r in rows)
    late = [r for r in rows if r["step"] > skip * total]
    out = {"band_steps": len(late)}
    for key, name in (("band_acc", "band_in"), ("speaker_acc", "band_raw_in")):
        vals = [r[key] for r in late if key in r]
        if vals:
            out[name] = float(np.mean([low <= v <= high for v in vals]))
    out["final_grl_lambda"], out["final_speaker_weight"] = rows[-1]["grl_lambda"], rows[-1]["speaker_weight"]
    return out


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/indextts_learning"))
    p.add_argument("--seed", type=int, default=7, help="corpus seed (the tests use 0)")
    p.add_argument("--speakers", type=int, default=20)
    p.add_argument("--utts", type=int, default=24)
    for n in (1, 2, 3):
        p.add_argument(f"--stage{n}", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override of Stage {n}'s config, after the recipe's (repeatable)")
    p.add_argument("--band-plot", type=Path, default=None, metavar="PNG",
                   help="copy the report's Stage-2 band plot (speaker_band.png) here, e.g. docs/band_stage2.png")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the pipeline config")
    args = p.parse_args(argv)

    from indextts_ray.pipeline.runner import run_pipeline
    from indextts_ray.pipeline.steps import layout

    cfg = pipeline_config(args.work.absolute(), args.seed, args.speakers, args.utts, args.overrides,
                          {n: getattr(args, f"stage{n}") for n in (1, 2, 3)})
    lay = layout(cfg)
    t0 = time.perf_counter()
    ran = run_pipeline(cfg)
    minutes = (time.perf_counter() - t0) / 60
    report = json.loads((lay.report / "report.json").read_text())
    base = logmel_baseline(cfg, lay)
    band_cfg = yaml_band(lay.runs / "stage2" / "config.resolved.yaml")
    band = band_shares(lay.runs / "stage2" / "metrics.jsonl", *band_cfg)

    kv: dict[str, object] = {"corpus_seed": args.seed, "speakers": args.speakers, "utts_per_speaker": args.utts,
                             "minutes": round(minutes, 1), "steps_run": len(ran)}
    # each step's own time from its receipt (a rerun that skipped steps still shows the whole recipe's cost)
    seconds = {}
    for f in sorted((lay.work / "receipts").glob("*.json")):
        receipt = json.loads(f.read_text())
        if "seconds" in receipt and "step" in receipt:
            seconds[receipt["step"]] = float(receipt["seconds"])
    kv["recipe_minutes"] = round(sum(seconds.values()) / 60, 1)
    kv.update({f"seconds_{k}": round(v) for k, v in seconds.items()})
    kv["baseline_emotion"] = base["emotion"].accuracy
    kv["baseline_speaker"] = base["speaker"].accuracy
    ec = report.get("emotion_control") or {}
    kv["code_judge"] = (ec.get("emotion_judge") or {}).get("accuracy")
    print(f"\n{'stage':<8}{'emo<-emo':>10}{'spk<-emo':>10}{'spk<-lat':>10}{'stop':>8}{'len':>7}{'stop_p':>8}"
          f"{'len_p':>7}{'ctl lab':>9}{'ctl ref':>9}   (%; stop/len greedy, stop_p/len_p top-p sampling)")
    for st in report["stages"]:
        name = st["name"]
        probes = st["probes"]
        for key in PROBE_KEYS:
            kv[f"{name}_{key}"] = probes[key]["accuracy"] if probes.get(key) else None
            kv[f"{name}_{key}_chance"] = probes[key]["chance"] if probes.get(key) else None
            kv[f"{name}_{key}_n"] = probes[key]["n_test"] if probes.get(key) else None
        greedy = st["sampling"].get("greedy") or {}
        kv[f"{name}_stop_rate"] = greedy.get("stop_rate")
        kv[f"{name}_length_ratio_median"] = greedy.get("length_ratio_median")
        top_p = st["sampling"].get("top_p") or {}  # the decoding IndexTTS2's inference uses (seeded)
        kv[f"{name}_topp_stop_rate"] = top_p.get("stop_rate")
        kv[f"{name}_topp_length_ratio_median"] = top_p.get("length_ratio_median")
        modes = ((st.get("emotion_control") or {}).get("modes")) or {}
        for mode in ("label", "reference"):
            m = modes.get(mode)
            kv[f"{name}_control_{mode}"] = m["emotion"]["accuracy"] if m else None
        print(f"{name:<8}" + "".join(f"{_pct(kv[f'{name}_{k}']):>10}" for k in PROBE_KEYS)
              + f"{_pct(kv[f'{name}_stop_rate']):>8}{_num(kv[f'{name}_length_ratio_median']):>7}"
              + f"{_pct(kv[f'{name}_topp_stop_rate']):>8}{_num(kv[f'{name}_topp_length_ratio_median']):>7}"
              + f"{_pct(kv[f'{name}_control_label']):>9}{_pct(kv[f'{name}_control_reference']):>9}")
    print(f"{'log-mel':<8}{_pct(kv['baseline_emotion']):>10}{'':>10}{_pct(kv['baseline_speaker']):>10}"
          "   (baseline: the same probes on 66 log-mel statistics of the same clips)")
    chance = report["stages"][0]["probes"]
    print(f"chance: emotion {_pct(chance['emotion_from_emovec']['chance'])}, speaker "
          f"{_pct(chance['speaker_from_emovec']['chance'])}; test clips per probe "
          f"{chance['emotion_from_emovec']['n_test']}; code judge on held-out real codes {_pct(kv['code_judge'])}")
    kv.update(band)
    if args.band_plot is not None and (lay.report / "speaker_band.png").is_file():
        args.band_plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lay.report / "speaker_band.png", args.band_plot)
    if band:
        print(f"Stage-2 band [{band_cfg[0]:.2f}, {band_cfg[1]:.2f}] after the first 20 %: controller reading "
              f"{_pct(band.get('band_in'))} % of {band['band_steps']} logged steps, raw per-step "
              f"{_pct(band.get('band_raw_in'))} %; final λ {band['final_grl_lambda']:.3g}, "
              f"weight {band['final_speaker_weight']:.3g}")
    print()
    for k, v in kv.items():
        print(f"{k}={_fmt(v)}")
    return 0


def yaml_band(resolved: Path) -> tuple[float, float]:
    import yaml

    b = ((yaml.safe_load(resolved.read_text()) or {}).get("train") or {}).get("band") or {}
    return float(b.get("low", 0.3)), float(b.get("high", 0.6))


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "none" if v is None else str(v)


if __name__ == "__main__":
    sys.exit(main())
