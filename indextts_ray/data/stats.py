"""`stats.json`: every count of a prepare run, from the metadata scan and the shard receipts."""

from __future__ import annotations

from collections import Counter

import numpy as np

from indextts_ray.data.metadata import MetadataScan
from indextts_ray.data.shards import DURATION_BINS
from indextts_ray.errors import DataError

_LIST_LIMIT = 50  # names listed in full (counts are always complete)


def build_stats(scan: MetadataScan, receipts: list[dict], rejected: list[dict]) -> dict:
    """Aggregate counts; raises if rows in != rows written + rows rejected."""
    written = {"train": 0, "val": 0}
    seconds = {"train": 0.0, "val": 0.0}
    counts: Counter = Counter(scan.counts)
    per: dict[str, Counter] = {"speaker": Counter(), "emotion": Counter(), "language": Counter()}
    dur_hist = np.zeros(len(DURATION_BINS), dtype=np.int64)
    code_hist = None
    for r in receipts:
        s = r["stats"]
        written[r["split"]] += r["rows"]
        seconds[r["split"]] += s["seconds"]
        counts.update(s["counts"])
        for k in per:
            per[k].update(s[k])
        dur_hist += np.asarray(s["duration_hist"], dtype=np.int64)
        hist = np.asarray(s["code_hist"], dtype=np.int64)
        code_hist = hist if code_hist is None else code_hist + hist
    total_written = written["train"] + written["val"]
    ok = scan.rows_in == total_written + len(rejected)
    invariant = (f"rows in {scan.rows_in} = written {total_written} (train {written['train']}, val {written['val']})"
                 f" + rejected {len(rejected)}")
    if not ok:
        raise DataError(f"row accounting broken: {invariant} does not hold; this is a bug, please report it")
    used = int((code_hist > 0).sum()) if code_hist is not None else 0
    singles = sorted(s for s, n in per["speaker"].items() if n == 1)
    return {
        "rows_in": scan.rows_in,
        "rows_out": total_written,
        "rows_written": {**written, "total": total_written},
        "rows_rejected": len(rejected),
        "invariant": invariant,
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        "hours": {k: v / 3600 for k, v in seconds.items()} | {"total": sum(seconds.values()) / 3600},
        "speakers": {"count": len(per["speaker"]), "rows": dict(sorted(per["speaker"].items()))},
        "emotions": dict(sorted(per["emotion"].items())),
        "languages": dict(sorted(per["language"].items())),
        "duration_hist": {"edges_s": DURATION_BINS, "counts": dur_hist.tolist()},
        "resampled": counts["resampled"],
        "downmixed": counts["downmixed"],
        "language_detected": counts["language_detected"],
        "duration_from_header": counts["duration_from_header"],
        "precomputed_codes": counts["precomputed_codes"],
        # prompts are drawn per epoch at training time among a speaker's accepted utterances; a speaker with
        # one accepted utterance follows data.prompt.single_utterance there (left out, or prompted by itself)
        "prompts": {
            "single_utterance_speakers": len(singles),
            "single_utterance_speaker_names": singles[:_LIST_LIMIT],
            "explicit_prompts": counts["explicit_prompts"],
        },
        "code_usage": {"used": used, "of": 0 if code_hist is None else len(code_hist),
                       "fraction": used / len(code_hist) if code_hist is not None and len(code_hist) else 0.0},
        "blank_lines": scan.blank_lines,
        "ignored_fields": scan.ignored_fields,
        # written rows whose spoken form differs from the manifest text (numbers, units, NFC, spacing, ...)
        "text_normalised": {"rows": counts["text_normalised"], "of": total_written},
        "leftover_chars": dict(scan.leftover_chars.most_common(_LIST_LIMIT)),
        "shards": {split: sum(1 for r in receipts if r["split"] == split and r["file"]) for split in written},
    }
