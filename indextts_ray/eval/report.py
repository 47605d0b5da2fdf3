"""Write the evaluation report: `report.md`, `report.html`, `report.json` and PNGs, into one directory.

The content is built once as a list of blocks (heading, paragraph, list, table, image) and rendered to both
Markdown and HTML, so the two never disagree. Everything is written into a temporary sibling directory that
then replaces `out_dir` in one rename: a reader never sees a half-written report, and a failed run leaves
the previous report in place.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from indextts_ray.eval import plots
from indextts_ray.eval.emotion_control import CONTROL_TARGET, JUDGE_TARGET, MODE_TITLES, EmotionControlSetup
from indextts_ray.eval.probes import ProbeResult, Z, judge
from indextts_ray.eval.results import PROBE_TITLES, PROBES, EvalOptions, StageResult, flat_metrics

EMOTION_TARGET = 0.85  # the MeloTTS emotion seed's recognition target
KEEP_TOLERANCE = 0.05  # Stage 3 "keeps" a probe result within this much of Stage 2
CHECK_MARK = {True: "✅ ", False: "❌ ", None: "➖ "}  # None: not judged (the reason is in the sentence)
# A check is judged only when its test set tells its two levels apart at Z s.e. (probes.judge): the goal from
# chance (emotion ≥ 85 %), Stage 1's speaker accuracy from chance (a fall is visible), Stage 2's from ±5 points.


@dataclass
class Block:
    kind: str  # h1 | h2 | p | list | table | img
    text: str = ""
    items: list | None = None  # list items, or table rows (first row = header)


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _probe_cell(r: StageResult, key: str) -> str:
    p = r.probes.get(key)
    return "n/a" if p is None else f"{_pct(p.accuracy)} ({_pct(p.chance)})"


def _ci(p: ProbeResult) -> str:
    """`62.8 % [48.1–75.4 %]`: an accuracy with its Wilson interval."""
    return f"{_pct(p.accuracy)} [{100 * p.interval[0]:.1f}–{_pct(p.interval[1])}]"


def _verdict(met: bool, n: int, levels: list[tuple[float, float]], text: str,
             unit: str = "test clips") -> tuple[bool | None, str]:
    """(met, text) when n examples tell apart both levels of every pair, else (None, text + why not)."""
    for a, b in levels:
        ok, note = judge(met, n, a, b, unit)
        if ok is None:
            return None, f"{text}; {note}"
    return met, text


def goal_checks(results: list[StageResult]) -> list[tuple[bool | None, str]]:
    """The Stage-2 goals, when stage1/stage2(/stage3) results are present, then the emotion-control targets:
    (met, sentence); met is None where a target cannot be judged (its test set too small, see `probes.judge`)."""
    by = {r.name: r for r in results}

    def probe(name: str, key: str) -> ProbeResult | None:
        return by[name].probes.get(key)

    checks: list[tuple[bool | None, str]] = []
    if {"stage1", "stage2"} <= by.keys():
        a, b = probe("stage1", "speaker_from_emovec"), probe("stage2", "speaker_from_emovec")
        if a is not None and b is not None:
            # judged when a fall from Stage 1's level all the way to chance would be visible
            checks.append(_verdict(b.accuracy < a.accuracy, min(a.n_test, b.n_test), [(a.accuracy, b.chance)],
                                   f"speaker probe on the emotion vector falls after Stage 2: {_ci(a)} → {_ci(b)}"))
    for r in results:
        e = probe(r.name, "emotion_from_emovec")
        if e is not None:
            checks.append(_verdict(e.accuracy >= EMOTION_TARGET, e.n_test, [(EMOTION_TARGET, e.chance)],
                                   f"{r.name}: emotion probe ≥ {EMOTION_TARGET:.0%}: {_ci(e)}"))
    if {"stage2", "stage3"} <= by.keys():
        e2, e3 = probe("stage2", "emotion_from_emovec"), probe("stage3", "emotion_from_emovec")
        s2, s3 = probe("stage2", "speaker_from_emovec"), probe("stage3", "speaker_from_emovec")
        if None not in (e2, e3, s2, s3):
            ok = e3.accuracy >= e2.accuracy - KEEP_TOLERANCE and s3.accuracy <= s2.accuracy + KEEP_TOLERANCE
            # "keeps within 5 points" means something only where 5 points are resolved
            checks.append(_verdict(ok, min(e2.n_test, e3.n_test, s2.n_test, s3.n_test),
                                   [(e2.accuracy, max(e2.accuracy - KEEP_TOLERANCE, 0.0)),
                                    (s2.accuracy, min(s2.accuracy + KEEP_TOLERANCE, 1.0))],
                                   f"Stage 3 keeps both (±{KEEP_TOLERANCE:.0%}): emotion {_ci(e2)} → {_ci(e3)}, "
                                   f"speaker on emotion vector {_ci(s2)} → {_ci(s3)}"))
    return checks + control_checks(results)


def control_checks(results: list[StageResult]) -> list[tuple[bool | None, str]]:
    """Per stage and mode: every emotion judged as asked on ≥ CONTROL_TARGET of its generated items. Not judged
    (None) when the emotion judge itself stays under JUDGE_TARGET on real codes (or its test set cannot tell
    JUDGE_TARGET from chance), or when an emotion has too few items to tell CONTROL_TARGET from chance."""
    checks: list[tuple[bool | None, str]] = []
    for r in results:
        for mode, m in (r.emotion_control.modes if r.emotion_control else {}).items():
            if m is None:
                continue
            per = m.emotion.per_class
            worst = min(per, key=per.get)
            text = (f"{r.name}: emotion control by {MODE_TITLES[mode]}, every emotion ≥ {CONTROL_TARGET:.0%}: mean "
                    f"{_pct(m.emotion.accuracy)}, lowest {worst} {_pct(per[worst])}")
            setup = r.emotion_control.setup
            gate, why = setup.judge_verdict()
            if gate is None:
                checks.append((None, f"{text}; emotion judge {why}"))
            elif not gate:
                checks.append((None, f"{text}; not judged: the emotion classifier reaches "
                                     f"{_ci(setup.emotion_judge.heldout)} on real codes (< {JUDGE_TARGET:.0%})"))
            else:
                n = min(m.emotion.class_counts().values())
                checks.append(_verdict(all(v >= CONTROL_TARGET for v in per.values()), n,
                                       [(CONTROL_TARGET, m.emotion.chance)], text, unit="items per emotion"))
    return checks


def build_blocks(results: list[StageResult], images: dict[str, Path | None], data_dir: Path,
                 options: EvalOptions) -> list[Block]:
    """The report's content (see the module doc); `images` maps a plot id to its file (None = not drawn)."""
    first = results[0]
    b: list[Block] = [
        Block("h1", "indextts-ray evaluation report"),
        Block("p", f"Held-out set: {data_dir / 'val'}, {first.n_rows} rows (seeded sample of at most "
                   f"{options.max_items}, seed {options.seed}), " + _probe_clips(first, options) + " Checkpoints: " + ", ".join(f"{r.name} = {r.export_dir}" for r in results)
                   + "."),
        Block("h2", "Summary"),
        Block("table", items=[
            ["stage", "val mel loss", "val text loss", "val mel top-1", *(f"{PROBE_TITLES[k]} (chance)" for k in PROBES),
             "stop rate (greedy)", "length ratio (greedy)"],
            *[[r.name, _num(r.losses["val_loss"]), _num(r.losses["val_text_loss"]), _pct(r.losses["val_mel_top1"]),
               *(_probe_cell(r, k) for k in PROBES),
               _pct(r.sampling.get("greedy", {}).get("stop_rate")),
               _num(r.sampling.get("greedy", {}).get("length_ratio_mean"), ".2f")] for r in results],
        ]),
    ]
    checks = goal_checks(results)
    if checks:
        b += [Block("h2", "Goals"), Block("list", items=[CHECK_MARK[ok] + text for ok, text in checks])]
    b += [Block("h2", "Training curves")]
    b += _image_or_note(images.get("loss_curves"), "loss curves per stage",
                        "no training metrics found (metrics.jsonl next to each export's run)")
    if images.get("speaker_band"):
        b += [Block("h2", "Stage 2: speaker adversary"),
              Block("p", "Speaker-classifier accuracy on GRL(emotion vector) during training, with its target band "
                         "shaded; below, the GRL λ and the speaker-loss weight the band controller set."),
              Block("img", "speaker accuracy, λ and weight", [images["speaker_band"]])]
    b += [Block("h2", "Probe accuracies"),
          Block("p", "Logistic regression on standardised vectors, stratified held-out split "
                     f"({options.test_fraction:.0%} test, seed {options.seed}); black lines: chance = always "
                     f"answering the training split's majority class. Classes with fewer than {options.min_per_class} "
                     "clips are left out.")]
    b += _image_or_note(images.get("probes"), "probe accuracies per stage", "no probe had two classes to separate")
    b += [Block("table", items=[
        ["stage", "probe", "accuracy", f"interval (Wilson, {Z:g} s.e.)", "chance", "classes", "train / test",
         "classes dropped"],
        *[[r.name, PROBE_TITLES[k], _pct(p.accuracy), f"{_pct(p.interval[0])} – {_pct(p.interval[1])}",
           _pct(p.chance), str(len(p.labels)), f"{p.n_train} / {p.n_test}", str(p.dropped_classes)]
          for r in results for k in PROBES if (p := r.probes.get(k)) is not None],
    ])]
    b += _per_emotion(results)
    for r in results:
        if images.get(f"confusion_{r.name}"):
            b.append(Block("img", f"{r.name} emotion confusion matrix", [images[f"confusion_{r.name}"]]))
    b += [Block("h2", "Clusters (PCA)")]
    for r in results:
        b += _image_or_note(images.get(f"clusters_{r.name}"), f"{r.name} clusters", f"{r.name}: too few clips")
    b += [Block("h2", "Padding and throughput")]
    b += _image_or_note(images.get("throughput"), "padding and tokens/s", "no throughput metrics found")
    b += _sampling(results)
    b += _emotion_control(results, images, options)
    return b


def _probe_clips(r: StageResult, options: EvalOptions) -> str:
    n = len(r.embeddings.clip_ids)
    if not options.probe_splits:
        return f"{n} distinct speaker-prompt clips for the probes."
    return (f"{n} clips for the probes: the utterances of {'+'.join(options.probe_splits)} (their own features"
            + ("; the GPT trained on the train ones, the probes are separate models" if "train" in options.probe_splits
               else "") + ").")


def _image_or_note(path: Path | None, alt: str, note: str) -> list[Block]:
    return [Block("img", alt, [path])] if path else [Block("p", f"({note})")]


def _per_emotion(results: list[StageResult]) -> list[Block]:
    probes = {r.name: r.probes.get("emotion_from_emovec") for r in results}
    labels = [label for label in results[0].emotion_labels if any(p and label in p.per_class for p in probes.values())]
    if not labels:
        return [Block("h2", "Per-emotion accuracy"), Block("p", "(no emotion labels on the held-out clips)")]
    rows = [["emotion", *probes]]
    for label in labels:
        rows.append([label, *(_pct(p.per_class.get(label)) if p else "n/a" for p in probes.values())])
    return [Block("h2", "Per-emotion accuracy"),
            Block("p", "Emotion probe on the emotion vector, accuracy on each emotion's held-out clips."),
            Block("table", items=rows)]


def _sampling(results: list[StageResult]) -> list[Block]:
    rows = [["stage", "setting", "prompts", "stop rate", "length ratio mean", "length ratio median", "mean codes"]]
    for r in results:
        for name, s in r.sampling.items():
            rows.append([r.name, name, str(s["n"]), _pct(s["stop_rate"]), _num(s["length_ratio_mean"], ".2f"),
                         _num(s["length_ratio_median"], ".2f"), _num(s["mean_codes"], ".1f")])
    return [Block("h2", "Sampling sanity"),
            Block("p", "Codes generated with the KV cache for the first held-out rows (their own prompt and text; "
                       "training mel positions). Stop rate: share that emitted the stop token before 3× the "
                       "reference length; length ratio: generated / reference codes. top_p = temperature 0.8, "
                       "top-k 30, top-p 0.8."),
            Block("table", items=rows)]


def _control_setup(results: list[StageResult]) -> EmotionControlSetup | None:
    return next((r.emotion_control.setup for r in results if r.emotion_control is not None), None)


def _emotion_control(results: list[StageResult], images: dict[str, Path | None], options: EvalOptions) -> list[Block]:
    setup, o = _control_setup(results), options.emotion_control
    if setup is None or o is None:
        return []
    ej, sj = setup.emotion_judge.heldout, setup.speaker_judge
    judges = (f"Judges: small convolutional classifiers over code embeddings (emotion_control.py, codeclf.py), "
              f"trained with seed {options.seed} on real codes of {'+'.join(setup.splits)} ({setup.n_real_rows} rows) "
              f"and tested on a held-out stratified part of them: emotion {_ci(ej)} on {ej.n_test} rows "
              f"(chance {_pct(ej.chance)})")
    judges += (f", speaker {_pct(sj.heldout.accuracy)} on {sj.heldout.n_test} rows (chance {_pct(sj.heldout.chance)})."
               if sj else "; no speaker judge (fewer than two speakers with enough rows).")
    gate, why = setup.judge_verdict()
    if gate:
        judges += (f" The emotion judge reaches ≥ {JUDGE_TARGET:.0%}, so the ≥ {CONTROL_TARGET:.0%} target is judged "
                   f"where each emotion has enough items.")
    elif gate is None:
        judges += f" The emotion judge is {why}: the ≥ {CONTROL_TARGET:.0%} target is not judged."
    else:
        judges += (f" The emotion judge reaches only {_pct(ej.accuracy)} on real codes (< {JUDGE_TARGET:.0%}): the "
                   f"≥ {CONTROL_TARGET:.0%} target is not judged. The numbers below still compare the checkpoints, "
                   "but a low accuracy may be the judge's failing rather than the model's.")
    if "train" in setup.splits:
        judges += (" The judges include train rows, which the GPT was trained on; the judges are separate models and "
                   "the generated texts are held-out ones.")
    b = [Block("h2", "Emotion control on generated codes"),
         Block("p", f"{len(setup.speakers)} speakers ({', '.join(setup.speakers)}) × {len(setup.texts)} held-out texts "
                    f"× {len(setup.labels)} emotions, each emotion asked for by its label (the trained emotion-label "
                    "table) and by a reference clip of that emotion from another speaker (zero-shot transfer), then "
                    "the generated codes judged. Each speaker's prompt is its neutral clip where it has one; alpha "
                    f"{o.alpha:g} blends the requested emotion vector with the prompt's own (1 = requested only); "
                    f"{o.sampling} decoding (seed {options.seed}), at most {o.max_codes} codes and {o.length_cap:g}× "
                    "the text's real length per item; KV cache."),
         Block("p", judges)]
    b += _image_or_note(images.get("code_judge"), "emotion judge on held-out real codes", "no emotion judge")
    rows = [["stage", "asked by", "judged as asked (chance)", "lowest emotion", "speaker judge = prompt speaker",
             "same speaker across emotions", "judged as the reference's speaker", "stop rate", "mean codes", "items"]]
    per_emotion = [["emotion"]]
    for r in results:
        for mode, m in (r.emotion_control.modes if r.emotion_control else {}).items():
            per_emotion[0].append(f"{r.name} {mode}")
            if m is None:
                rows.append([r.name, MODE_TITLES[mode], *["n/a"] * 8])
                continue
            worst = min(m.emotion.per_class, key=m.emotion.per_class.get)
            rows.append([r.name, MODE_TITLES[mode], f"{_pct(m.emotion.accuracy)} ({_pct(m.emotion.chance)})",
                         f"{worst} {_pct(m.emotion.per_class[worst])}", _pct(m.speaker_agreement),
                         _pct(m.speaker_consistency), _pct(m.reference_speaker_rate), _pct(m.stop_rate),
                         _num(m.mean_codes, ".1f"), str(m.n_items)])
    for label in setup.labels:
        per_emotion.append([label, *(_pct(m.emotion.per_class.get(label)) if m else "n/a"
                                     for r in results for m in (r.emotion_control.modes if r.emotion_control else {}).values())])
    b += [Block("table", items=rows), Block("p", "Share of each emotion's generated items the judge hears as that emotion:"),
          Block("table", items=per_emotion)]
    b += _image_or_note(images.get("emotion_control"), "per-emotion accuracy on generated codes", "nothing generated")
    for r in results:
        for mode in (r.emotion_control.modes if r.emotion_control else {}):
            if images.get(f"control_{r.name}_{mode}"):
                b.append(Block("img", f"{r.name} {mode}: asked vs judged emotion", [images[f"control_{r.name}_{mode}"]]))
    notes = setup.notes + [f"{r.name}: {n}" for r in results if r.emotion_control for n in r.emotion_control.notes]
    if notes:
        b.append(Block("list", items=notes))
    return b


# ----------------------------------------------------------------------------- rendering


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for blk in blocks:
        if blk.kind in ("h1", "h2"):
            out.append(("# " if blk.kind == "h1" else "## ") + blk.text)
        elif blk.kind == "p":
            out.append(blk.text)
        elif blk.kind == "list":
            out.append("\n".join(f"- {item}" for item in blk.items))
        elif blk.kind == "table":
            header, *rows = blk.items
            esc = [[str(c).replace("|", "\\|") for c in row] for row in blk.items]
            lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
            out.append("\n".join(lines))
        elif blk.kind == "img":
            out.append(f"![{blk.text}]({blk.items[0].name})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block], title: str = "indextts-ray evaluation report") -> str:
    e = html.escape
    body = []
    for blk in blocks:
        if blk.kind in ("h1", "h2", "p"):
            body.append(f"<{blk.kind}>{e(blk.text)}</{blk.kind}>")
        elif blk.kind == "list":
            body.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in blk.items) + "</ul>")
        elif blk.kind == "table":
            header, *rows = blk.items
            head = "".join(f"<th>{e(str(c))}</th>" for c in header)
            trs = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        elif blk.kind == "img":
            body.append(f'<p><img src="{e(blk.items[0].name)}" alt="{e(blk.text)}"></p>')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;font-size:90%}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


# ----------------------------------------------------------------------------- writing


def draw_plots(results: list[StageResult], out: Path) -> dict[str, Path | None]:
    """Every plot of the report into `out`; plot id -> file (None where its data are absent)."""
    curves = {r.name: r.curves for r in results}
    images: dict[str, Path | None] = {
        "loss_curves": plots.plot_loss_curves(curves, out / "loss_curves.png",
                                              {r.name: r.losses["val_loss"] for r in results}),
        "speaker_band": plots.plot_speaker_band(curves, {r.name: r.band for r in results}, out / "speaker_band.png"),
        "probes": plots.plot_probe_bars({r.name: r.probes for r in results}, PROBE_TITLES, out / "probes.png"),
        "throughput": plots.plot_throughput(curves, out / "throughput.png"),
    }
    for r in results:
        images[f"confusion_{r.name}"] = plots.plot_confusion(
            r.probes.get("emotion_from_emovec"), f"{r.name}: emotion ← emotion vector", out / f"confusion_{r.name}.png")
        images[f"clusters_{r.name}"] = plots.plot_clusters(r.embeddings, r.emotion_labels, r.name,
                                                           out / f"clusters_{r.name}.png")
    setup = _control_setup(results)
    if setup is not None:
        controls = {r.name: r.emotion_control.modes for r in results if r.emotion_control is not None}
        images["code_judge"] = plots.plot_confusion(setup.emotion_judge.heldout, "emotion judge on held-out real codes",
                                                    out / "code_judge_emotion.png")
        images["emotion_control"] = plots.plot_emotion_control(
            {n: {k: (m.emotion if m else None) for k, m in modes.items()} for n, modes in controls.items()},
            MODE_TITLES, out / "emotion_control.png")
        for n, modes in controls.items():
            for k, m in modes.items():
                images[f"control_{n}_{k}"] = plots.plot_confusion(
                    m.emotion if m else None, f"{n}: emotion asked by {k} vs judged on the codes",
                    out / f"control_{n}_{k}.png", axes=("asked", "judged"))
    return images


def write_report(results: list[StageResult], out_dir: Path, data_dir: Path, options: EvalOptions) -> dict:
    """Render and write the report directory atomically (module doc); returns the `report.json` content."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        images = draw_plots(results, tmp)
        blocks = build_blocks(results, images, data_dir, options)
        (tmp / "report.md").write_text(render_markdown(blocks), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(blocks), encoding="utf-8")
        summary = {
            "stages": [r.to_json() for r in results],
            "flat": flat_metrics(results),
            "checks": [{"ok": ok, "text": text} for ok, text in goal_checks(results)],
            "emotion_control": setup.to_json() if (setup := _control_setup(results)) else None,
            "images": sorted(p.name for p in images.values() if p is not None),
        }
        (tmp / "report.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _replace_dir(new: Path, final: Path) -> None:
    """Swap `new` in as `final` (two renames; the old report is removed only after the new one is in place)."""
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)
