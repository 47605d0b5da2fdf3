"""`indextts-ray segment`: cut long recordings at silences into 3–15 s segments with manifests."""

from __future__ import annotations

import argparse
from pathlib import Path

from indextts_ray.data.segment import SegmentParams, segment_recordings

HELP = ("Cut long recordings at silences (default -40 dBFS, >= 1.0 s) into 3-15 s segments: over-long ones "
        "are split at their deepest shorter pause, too-short neighbours merged. Writes wavs/, manifest.jsonl, "
        "MeloTTS metadata.list/train.list/val.list and conversion_log.json. Emotion labels come from folder "
        "names (<speaker>/<emotion>/x.wav) or a CSV (file,emotion[,speaker,language]).")
EXAMPLES = [
    "indextts-ray segment data/raw --out data/segments --language ko",
    "indextts-ray segment data/raw --out data/segments --emotions-from csv --labels-csv labels.csv --language en",
    "indextts-ray segment lecture.flac --out data/lecture --speaker prof --language en --emotions-from none",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SegmentParams()
    p.add_argument("input", type=Path, help="folder of recordings (searched recursively) or one audio file")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--speaker", help="speaker of every file (default: first folder that is not an emotion)")
    p.add_argument("--language", help="language of every file (a CSV 'language' column wins)")
    p.add_argument("--emotions-from", choices=["folders", "csv", "none"], default=None,
                   help="default: csv when --labels-csv is given, else folders")
    p.add_argument("--labels-csv", type=Path, help="CSV file,emotion[,speaker,language]; file relative to INPUT")
    p.add_argument("--emotion-labels", help="comma list of valid emotions (default: the model's labels)")
    p.add_argument("--threshold-db", type=float, default=d.threshold_dbfs, help=f"silence below this dBFS ({d.threshold_dbfs})")
    p.add_argument("--min-silence", type=float, default=d.min_silence, help=f"seconds of silence that cut ({d.min_silence})")
    p.add_argument("--min-len", type=float, default=d.min_len, help=f"shortest segment, s ({d.min_len})")
    p.add_argument("--max-len", type=float, default=d.max_len, help=f"longest segment, s ({d.max_len})")
    p.add_argument("--pad", type=float, default=d.pad, help=f"silence kept around each segment, s ({d.pad})")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=f"share for val.list ({d.val_fraction})")
    p.add_argument("--sample-rate", type=int, help="resample segments to this rate (default: keep)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    params = SegmentParams(threshold_dbfs=args.threshold_db, min_silence=args.min_silence, min_len=args.min_len,
                           max_len=args.max_len, pad=args.pad, val_fraction=args.val_fraction)
    emotions_from = args.emotions_from or ("csv" if args.labels_csv else "folders")
    labels = [e.strip() for e in args.emotion_labels.split(",") if e.strip()] if args.emotion_labels else None
    log = segment_recordings(args.input, args.out, params, speaker=args.speaker, language=args.language,
                             emotions_from=emotions_from, labels_csv=args.labels_csv, emotion_labels=labels,
                             sample_rate=args.sample_rate, progress=not args.no_progress)
    t = log["totals"]
    print(f"{t['files']} files ({t['seconds_in'] / 60:.1f} min) -> {t['segments']} segments "
          f"({t['seconds_out'] / 60:.1f} min; train {t['train']}, val {t['val']}): split {t['split']}, "
          f"forced splits {t['forced_splits']}, merged {t['merged']}, dropped short {t['dropped_short']}, "
          f"unreadable files {t['files_failed']}")
    print(f"wrote {args.out}/manifest.jsonl, metadata.list, train.list, val.list, conversion_log.json "
          "(text is empty: transcribe before prepare)")
    return 0
