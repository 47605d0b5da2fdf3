"""What share of each speaker, emotion and language each rejection reason removed.

A filter that is right on average can still empty one group: a clip rule that drops loud speech removes
`angry` rows and no others, and the model then never hears that emotion. `prepare` prints a warning for every
(reason, group) that lost more than `WARN_SHARE` of the group's rows, with the counts, and the rows the model's
length limits dropped per emotion; both go into `stats.json`.

Only rows that passed the field checks belong to a group (a line that is not JSON has no trustworthy speaker).
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from indextts_ray.data.metadata import MetadataScan

DIMENSIONS = ("speaker", "emotion", "language")
WARN_SHARE = 0.10
MIN_GROUP_ROWS = 10  # below this one or two rows are already 10 %: counted in stats.json, not warned about
LENGTH_LIMITS = ("text_too_long", "too_many_codes")  # model.max_text_tokens, model.max_mel_tokens
NO_EMOTION = "(none)"


def filter_shares(scan: MetadataScan, rejected: list[dict]) -> dict:
    """`{"warnings": [...], "length_limits_by_emotion": {...}}` for `stats.json`.

    Args:
        scan: the metadata scan (its table still holds the rows the shard workers rejected).
        rejected: every rejected row (`scan.rejected` + the shard receipts' rows).
    """
    table = scan.table
    totals: dict[str, Counter] = {}
    for k, dim in enumerate(DIMENSIONS):
        counts = Counter({_label(item["values"]): item["counts"]
                          for item in pc.value_counts(table.column(dim)).to_pylist()})
        counts.update(_label(g[k]) for g in scan.rejected_groups.values())
        totals[dim] = counts
    groups = dict(scan.rejected_groups)
    later = [r["line"] for r in rejected if r["line"] not in groups]  # rejected in the shard workers
    if later:
        rows = table.filter(pc.is_in(table.column("line"), pa.array(later, pa.int64())))
        groups |= {line: (s, e, lang) for line, s, e, lang in zip(*(rows.column(c).to_pylist() for c in
                                                                   ("line", *DIMENSIONS)))}
    removed: Counter = Counter()
    for r in rejected:
        g = groups.get(r["line"])
        if g is not None:
            for k, dim in enumerate(DIMENSIONS):
                removed[(r["reason"], dim, _label(g[k]))] += 1

    warnings = []
    for (reason, dim, value), n in removed.items():
        of = totals[dim][value]
        if of >= MIN_GROUP_ROWS and n > WARN_SHARE * of:
            warnings.append({"reason": reason, "group": dim, "value": value, "removed": n, "of": of,
                             "share": round(n / of, 4)})
    warnings.sort(key=lambda w: (-w["share"], -w["removed"], w["reason"], w["group"], w["value"]))
    by_emotion = {value: {"of": totals["emotion"][value]} | {
        reason: removed[(reason, "emotion", value)] for reason in LENGTH_LIMITS if removed[(reason, "emotion", value)]}
        for value in sorted(totals["emotion"])}
    return {"warnings": warnings,
            "length_limits_by_emotion": {v: c for v, c in by_emotion.items() if len(c) > 1}}


def format_warning(w: dict) -> str:
    return (f"{w['reason']} removed {w['removed']} of {w['of']} rows ({w['share']:.0%}) of {w['group']} "
            f"{w['value']!r}")


def _label(value) -> str:
    return NO_EMOTION if value is None else str(value)
