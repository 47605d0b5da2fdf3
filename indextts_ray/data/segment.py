"""Cut long recordings into 3–15 s training segments at silences.

Per file (streamed: the file is never decoded whole):

1. **Levels**: RMS of 10 ms frames in dBFS (`20 log10 rms`, full-scale square = 0 dBFS), channels averaged.
2. **Speech regions**: everything between silences (frames below `threshold_dbfs`) of ≥ `min_silence` s.
3. **Split** regions longer than `max_len - 2 pad` at their deepest shorter pause: the longest run of silent frames
   (≥ `min_split_pause`; ties: the quieter, then the more central) that leaves ≥ `min_len` on both sides,
   recursively. With no such pause, at the quietest 100 ms that does (a *forced* split, counted and logged).
4. **Merge** regions shorter than `min_len` with a neighbour (across the shorter gap first) when the result
   stays ≤ `max_len - 2 pad` and the gap ≤ `max_merge_gap`; what is still short is dropped (counted and logged).
5. **Write** each segment with up to `pad` s of its surrounding silence (never past the midpoint of a gap),
   as PCM16 wav, plus `manifest.jsonl`, MeloTTS `metadata.list` / `train.list` / `val.list` and
   `conversion_log.json`.

Labels: the speaker is `--speaker`, a `speaker` CSV column, or the first folder below the input root that is not
an emotion label; the emotion comes from a folder named like a label (`<root>/<speaker>/<emotion>/x.wav`), a
CSV (`file,emotion[,speaker,language]`, `file` relative to the root) or is left out. Segments have no
transcript (`text` is empty): transcribe them before `prepare`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from indextts_ray.data.manifest import write_jsonl, write_melo_list
from indextts_ray.errors import DataError
from indextts_ray.io_utils import atomic_write, atomic_write_json
from indextts_ray.model.config import EMOTION_LABELS

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
FRAME_S = 0.01
BLOCK_FRAMES = 6000  # 60 s of frames per read: bounded memory for hour-long files


@dataclass(frozen=True)
class SegmentParams:
    """Silence detection and segment-length rules (seconds, dBFS)."""

    threshold_dbfs: float = -40.0
    min_silence: float = 1.0
    min_len: float = 3.0
    max_len: float = 15.0
    min_split_pause: float = 0.15
    max_merge_gap: float = 3.0
    pad: float = 0.2
    val_fraction: float = 0.05

    def __post_init__(self) -> None:
        problems = []
        if not self.threshold_dbfs < 0:
            problems.append(f"threshold_dbfs {self.threshold_dbfs} must be < 0")
        if not 0 < self.min_len < self.max_len:
            problems.append(f"need 0 < min_len ({self.min_len}) < max_len ({self.max_len})")
        if self.max_len - 2 * self.pad < 2 * self.min_len:
            problems.append(f"max_len {self.max_len} - 2 x pad {self.pad} must be >= 2 x min_len {self.min_len} "
                            "so that long regions can be split")
        if self.min_silence <= 0 or self.min_split_pause <= 0 or self.pad < 0 or self.max_merge_gap < 0:
            problems.append("min_silence and min_split_pause must be > 0, pad and max_merge_gap >= 0")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction {self.val_fraction} must be in [0, 1)")
        if problems:
            raise DataError("segment: " + "; ".join(problems))

    @property
    def speech_max(self) -> float:
        """Longest speech region: the written segment adds up to `pad` on each side and must stay <= max_len."""
        return self.max_len - 2 * self.pad


# ----------------------------------------------------------------------------- levels and regions


def frame_levels(path: Path, frame_s: float = FRAME_S) -> tuple[np.ndarray, int, int, int]:
    """(dBFS per frame, sample rate, samples, channels), reading the file in blocks."""
    with sf.SoundFile(path) as f:
        sr, frames, channels = f.samplerate, f.frames, f.channels
        hop = int(round(sr * frame_s))
        out = []
        for block in f.blocks(blocksize=hop * BLOCK_FRAMES, dtype="float32", always_2d=True):
            mono = block.mean(axis=1, dtype=np.float64)
            m = len(mono) // hop
            if m:
                out.append(np.sqrt(np.mean(mono[: m * hop].reshape(m, hop) ** 2, axis=1)))
            # a partial last frame (< 10 ms at the very end) is ignored
    rms = np.concatenate(out) if out else np.zeros(0)
    return 20 * np.log10(np.maximum(rms, 1e-10)), sr, frames, channels


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0].tolist(), np.nonzero(d == -1)[0].tolist()))


def find_speech(levels: np.ndarray, p: SegmentParams, frame_s: float = FRAME_S) -> list[tuple[int, int]]:
    """Frame ranges [start, end) between silences of at least `min_silence`."""
    silent = levels < p.threshold_dbfs
    long_silences = [(a, b) for a, b in _runs(silent) if (b - a) * frame_s >= p.min_silence]
    regions, cursor = [], 0
    for a, b in long_silences + [(len(levels), len(levels))]:
        if a > cursor:
            # trim the short silent edges left at the recording's start/end
            loud = np.nonzero(~silent[cursor:a])[0]
            if len(loud):
                regions.append((cursor + int(loud[0]), cursor + int(loud[-1]) + 1))
        cursor = b
    return regions


@dataclass
class Decisions:
    """What the length rules did to one file, for the conversion log."""

    split: int = 0
    forced_splits: list[float] = field(default_factory=list)  # seconds
    merged: int = 0
    dropped: list[list[float]] = field(default_factory=list)  # [start, end] seconds


def _split(region: tuple[int, int], levels: np.ndarray, p: SegmentParams, d: Decisions,
           frame_s: float) -> list[tuple[int, int]]:
    a, b = region
    if (b - a) * frame_s <= p.speech_max:
        return [region]
    min_f = int(round(p.min_len / frame_s))
    silent = levels[a:b] < p.threshold_dbfs
    best = None
    for s, e in _runs(silent):
        if (e - s) * frame_s < p.min_split_pause or s < min_f or (b - a) - e < min_f:
            continue
        key = (e - s, -float(levels[a + s:a + e].mean()), -abs((s + e) / 2 - (b - a) / 2))
        if best is None or key > best[0]:
            best = (key, s, e)
    if best is not None:
        d.split += 1
        _, s, e = best
        left, right = (a, a + s), (a + e, b)
    else:  # no usable pause: cut at the quietest 100 ms that leaves min_len on both sides
        w = max(1, int(round(0.1 / frame_s)))
        smooth = np.convolve(levels[a:b], np.ones(w) / w, mode="same")
        cut = min_f + int(np.argmin(smooth[min_f:(b - a) - min_f + 1]))
        d.forced_splits.append(round((a + cut) * frame_s, 3))
        left, right = (a, a + cut), (a + cut, b)
    return _split(left, levels, p, d, frame_s) + _split(right, levels, p, d, frame_s)


def _merge(regions: list[tuple[int, int]], p: SegmentParams, d: Decisions, frame_s: float) -> list[tuple[int, int]]:
    regs = list(regions)
    changed = True
    while changed:
        changed = False
        for i, (a, b) in enumerate(regs):
            if (b - a) * frame_s >= p.min_len:
                continue
            options = []
            if i > 0:
                options.append((a - regs[i - 1][1], i - 1))
            if i + 1 < len(regs):
                options.append((regs[i + 1][0] - b, i + 1))
            for gap, j in sorted(options):
                lo, hi = min(i, j), max(i, j)
                if gap * frame_s <= p.max_merge_gap and (regs[hi][1] - regs[lo][0]) * frame_s <= p.speech_max:
                    regs[lo:hi + 1] = [(regs[lo][0], regs[hi][1])]
                    d.merged += 1
                    changed = True
                    break
            if changed:
                break
    kept = []
    for a, b in regs:
        if (b - a) * frame_s >= p.min_len:
            kept.append((a, b))
        else:
            d.dropped.append([round(a * frame_s, 3), round(b * frame_s, 3)])
    return kept


def plan_segments(levels: np.ndarray, p: SegmentParams, frame_s: float = FRAME_S) -> tuple[list[tuple[int, int]], Decisions]:
    """Speech regions → split → merge: the final frame ranges, all within [min_len, max_len]."""
    d = Decisions()
    regions = [r for reg in find_speech(levels, p, frame_s) for r in _split(reg, levels, p, d, frame_s)]
    return _merge(regions, p, d, frame_s), d


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Labels:
    speaker: str
    emotion: str | None
    language: str


def read_labels_csv(path: Path) -> dict[str, dict[str, str]]:
    """`file,emotion[,speaker,language]` rows keyed by the posix `file` path (relative to the input root)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "file" not in reader.fieldnames:
                raise DataError(f"{path}: needs a header with a 'file' column (file,emotion[,speaker,language])")
            rows: dict[str, dict[str, str]] = {}
            for lineno, row in enumerate(reader, start=2):
                key = Path((row.get("file") or "").strip()).as_posix()
                if not key or key == ".":
                    raise DataError(f"{path}:{lineno}: empty 'file'")
                if key in rows:
                    raise DataError(f"{path}:{lineno}: {key} is listed twice")
                rows[key] = {k: (v or "").strip() for k, v in row.items() if k and k != "file"}
    except FileNotFoundError:
        raise DataError(f"labels CSV not found: {path}") from None
    return rows


def label_file(rel: Path, *, emotions_from: str, emotion_labels: list[str], csv_row: dict[str, str] | None,
               speaker: str | None, language: str | None) -> Labels:
    """Speaker, emotion and language of one input file (relative path `rel`), or a DataError saying why not."""
    labels = {e.lower() for e in emotion_labels}
    folders = list(rel.parent.parts)
    emotion = None
    if emotions_from == "folders":
        found = [f for f in folders if f.lower() in labels]
        if len(found) != 1:
            raise DataError(f"{rel}: {'no' if not found else 'more than one'} emotion folder among {folders} "
                            f"(labels {sorted(labels)}); put it under <emotion>/, or use --labels-csv or --emotions-from none")
        emotion = found[0].lower()
    elif emotions_from == "csv":
        emotion = (csv_row or {}).get("emotion", "").lower() or None
        if emotion is None or emotion not in labels:
            raise DataError(f"{rel}: emotion {emotion!r} in the labels CSV is not one of {sorted(labels)}")
    spk = speaker or (csv_row or {}).get("speaker") or next((f for f in folders if f.lower() not in labels), None)
    if not spk:
        raise DataError(f"{rel}: no speaker: pass --speaker, add a 'speaker' CSV column, "
                        "or put the file under <speaker>/")
    lang = (csv_row or {}).get("language") or language
    if not lang:
        raise DataError(f"{rel}: no language: pass --language or add a 'language' CSV column")
    return Labels(speaker=spk, emotion=emotion, language=lang)


# ----------------------------------------------------------------------------- driver


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


def _is_val(seg_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha1(seg_id.encode()).digest()[:8], "big") / 2**64
    return h < fraction


def _write_segment(src: Path, start: int, end: int, out: Path, target_sr: int | None) -> int:
    with sf.SoundFile(src) as f:
        f.seek(start)
        data = f.read(end - start, dtype="float32", always_2d=True)
        sr = f.samplerate
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if target_sr and target_sr != sr:
        from indextts_ray.data.audio import resample  # torch import only when resampling

        wav, sr = resample(wav, sr, target_sr), target_sr
    atomic_write(out, lambda tmp: sf.write(tmp, wav, sr, subtype="PCM_16", format="WAV"))
    return len(wav)


def list_audio(input_path: Path) -> tuple[Path, list[Path]]:
    """(root, audio files below it, sorted); a single file is its own list."""
    if input_path.is_file():
        return input_path.parent, [input_path]
    if not input_path.is_dir():
        raise DataError(f"segment input not found: {input_path}")
    files = sorted(p for p in input_path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"{input_path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) below it")
    return input_path, files


def segment_recordings(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: SegmentParams = SegmentParams(),
    *,
    speaker: str | None = None,
    language: str | None = None,
    emotions_from: str = "folders",
    labels_csv: str | os.PathLike | None = None,
    emotion_labels: list[str] | None = None,
    sample_rate: int | None = None,
    progress: bool = True,
) -> dict:
    """Segment every audio file under `input_path` into `out_dir`; returns the conversion log (also written).

    Args:
        input_path: a folder (searched recursively for audio) or one file.
        out_dir: gets `wavs/<speaker>/<id>.wav`, `manifest.jsonl`, `metadata.list`, `train.list`,
            `val.list`, `conversion_log.json`.
        params: silence and length rules.
        speaker / language: fixed values for every file (CSV columns win over `language`).
        emotions_from: `folders`, `csv` or `none`.
        labels_csv: CSV with `file,emotion[,speaker,language]`; required for `emotions_from="csv"`.
        emotion_labels: valid emotions (default: the model's labels).
        sample_rate: resample written segments to this rate (default: keep each file's rate).
    """
    if emotions_from not in ("folders", "csv", "none"):
        raise DataError(f"emotions_from {emotions_from!r}: use folders, csv or none")
    if emotions_from == "csv" and labels_csv is None:
        raise DataError("emotions_from csv needs --labels-csv FILE")
    root, files = list_audio(Path(input_path))
    out_dir = Path(out_dir)
    emotion_labels = list(emotion_labels or EMOTION_LABELS)
    table = read_labels_csv(Path(labels_csv)) if labels_csv is not None else None
    if table is not None:
        missing = [f.relative_to(root).as_posix() for f in files if f.relative_to(root).as_posix() not in table]
        if missing:
            raise DataError(f"{labels_csv}: {len(missing)} audio files have no row (first: {missing[0]}); "
                            "add rows for them or move them out of the input folder")
    # label every file before any audio work, so a labelling mistake fails fast
    labelled = [(f, label_file(f.relative_to(root), emotions_from=emotions_from, emotion_labels=emotion_labels,
                               csv_row=None if table is None else table[f.relative_to(root).as_posix()],
                               speaker=speaker, language=language)) for f in files]

    rows, file_logs, failed = [], [], []
    for path, lab in tqdm(labelled, desc="segment", unit="file", disable=not progress):
        rel = path.relative_to(root)
        try:
            levels, sr, n, channels = frame_levels(path)
        except (RuntimeError, OSError) as e:  # soundfile's decode/open errors; counted, the other files go on
            failed.append({"path": rel.as_posix(), "error": str(e).splitlines()[0] if str(e) else type(e).__name__})
            log.warning("cannot read %s: %s", path, e)
            continue
        hop = int(round(sr * FRAME_S))
        plan, dec = plan_segments(levels, params)
        segs = []
        for k, (a, b) in enumerate(plan):
            # pad with surrounding silence, but never past the midpoint to the neighbouring segment
            lo_lim = 0 if k == 0 else (plan[k - 1][1] + a) // 2
            hi_lim = len(levels) if k == len(plan) - 1 else (b + plan[k + 1][0]) // 2
            pad = int(round(params.pad / FRAME_S))
            fa, fb = max(a - pad, lo_lim), min(b + pad, hi_lim)
            start, end = fa * hop, min(fb * hop, n)
            seg_id = _safe("_".join(rel.with_suffix("").parts)) + f"_{k:04d}"
            audio_rel = Path("wavs") / _safe(lab.speaker) / f"{seg_id}.wav"
            written = _write_segment(path, start, end, out_dir / audio_rel, sample_rate)
            row = {"id": seg_id, "audio_path": audio_rel.as_posix(), "text": "", "speaker": lab.speaker,
                   "language": lab.language, "duration": round(written / (sample_rate or sr), 6)}
            if lab.emotion:
                row["emotion"] = lab.emotion
            row.update(source=rel.as_posix(), source_start=round(start / sr, 4), source_end=round(end / sr, 4),
                       speech_start=round(a * FRAME_S, 3), speech_end=round(b * FRAME_S, 3))
            rows.append(row)
            segs.append({"id": seg_id, "speech": [row["speech_start"], row["speech_end"]],
                         "written": [row["source_start"], row["source_end"]]})
        file_logs.append({"path": rel.as_posix(), "speaker": lab.speaker, "emotion": lab.emotion,
                          "language": lab.language, "sample_rate": sr, "channels": channels,
                          "downmixed": channels > 1, "duration": round(n / sr, 4),
                          "segments": segs, **asdict(dec)})

    if not file_logs:  # nothing readable: empty lists would look like a finished run
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "conversion_log.json", {"input": str(input_path), "failed": failed})
        first = failed[0]
        raise DataError(f"{input_path}: none of the {len(files)} audio files could be read ({len(failed)} "
                        f"unreadable; first: {first['path']}: {first['error']}); see {out_dir}/conversion_log.json")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DataError("segment ids collide after replacing unusual characters in file names; rename the inputs")
    val = {r["id"] for r in rows if _is_val(r["id"], params.val_fraction)}
    if not val and len(rows) >= 2 and params.val_fraction > 0:  # tiny inputs still get a validation row
        val = {min(ids, key=lambda i: hashlib.sha1(i.encode()).digest())}
    write_jsonl(rows, out_dir / "manifest.jsonl")
    write_melo_list(rows, out_dir / "metadata.list")
    write_melo_list([r for r in rows if r["id"] not in val], out_dir / "train.list")
    write_melo_list([r for r in rows if r["id"] in val], out_dir / "val.list")
    totals = {
        "files": len(files), "files_failed": len(failed), "segments": len(rows), "train": len(rows) - len(val),
        "val": len(val), "seconds_in": round(sum(f["duration"] for f in file_logs), 3),
        "seconds_out": round(sum(r["duration"] for r in rows), 3),
        "split": sum(f["split"] for f in file_logs),
        "forced_splits": sum(len(f["forced_splits"]) for f in file_logs),
        "merged": sum(f["merged"] for f in file_logs), "dropped_short": sum(len(f["dropped"]) for f in file_logs),
        "downmixed_files": sum(f["downmixed"] for f in file_logs),
    }
    conversion = {"params": asdict(params), "input": str(input_path), "emotions_from": emotions_from,
                  "sample_rate": sample_rate, "totals": totals, "files": file_logs, "failed": failed,
                  "note": "segments have no transcript (text is empty): transcribe them before `prepare`"}
    atomic_write_json(out_dir / "conversion_log.json", conversion)
    return conversion
