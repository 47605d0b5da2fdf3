"""`prepare_dataset`: manifest -> validated, paired, featurised Parquet shards (the `indextts-ray prepare` step).

    manifest --scan_manifest (data.scan_workers processes)--> accepted metadata + rejected rows
             --tokenizer (given, or trained on the normalised text)--> text_ids   (text_too_long rejected)
             --plan_shards--> train/val shards, fixed before any audio is read
             --builtin only: fit the k-means codebook on a sample of the corpus
             --Ray Data: one ShardWorker task per unfinished shard--> <out>/{train,val}/shard-NNNNN.arrow
             --> rejected.parquet, stats.json, dataset.json (written last: its presence = complete)

Resume: `plan.json` holds the run's fingerprint (config, manifest and tokenizer hashes, schema version). A
rerun with the same fingerprint skips every shard whose receipt matches; another fingerprint is refused
unless `restart=True`, which deletes this step's outputs first. Audio files are not hashed: if they change,
rerun with `restart=True`.

Invariant, checked and printed: rows in = rows written + rows rejected.

`data.output_dir` may be an object-store URI (`storage.py`): shard workers upload each shard and receipt as one
object; the tokenizer and the builtin codebook are made here and uploaded, and read from local copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indextts_ray import storage
from indextts_ray.config import Config
from indextts_ray.data.audio import load_checked
from indextts_ray.data.features.base import FRAME_RATE
from indextts_ray.data.features.builtin import codebook_path, fit_codebook
from indextts_ray.data.manifest import Rejection
from indextts_ray.data.metadata import (
    MetadataScan,
    nothing_accepted,
    resolve_inputs,
    scan_manifest,
    tokenize_table,
)
from indextts_ray.data.pairing import stable_hash
from indextts_ray.data.plan import ShardPlan, plan_shards
from indextts_ray.data.schema import REJECTED_SCHEMA, SCHEMA_VERSION
from indextts_ray.data.shards import ShardContext, ShardWorker
from indextts_ray.data.shares import filter_shares, format_warning
from indextts_ray.data.stats import build_stats
from indextts_ray.data.tokenizer import Tokenizer, load_tokenizer, min_vocab_size, train_tokenizer
from indextts_ray.errors import DataError
from indextts_ray.io_utils import sha256_file

log = logging.getLogger(__name__)

# what `restart` may delete: only this step's own outputs
OUTPUTS = ("train", "val", "receipts", "features", "bpe.model", "plan.json", "rejected.parquet", "stats.json",
           "dataset.json")
# keys that do not change the result (resources, where it goes)
_NOT_FINGERPRINTED = {"workers": True, "scan_workers": True, "cpus_per_worker": True, "gpus_per_worker": True,
                      "output_dir": True,
                      # prompts are drawn at training time: only max_seconds (explicit prompts are cut) is stored
                      "prompt": {"same_emotion": True, "single_utterance": True, "seed": True}}


@dataclass
class PrepareResult:
    out_dir: Path | str  # a URI when data.output_dir is one
    stats: dict
    shards_written: int
    shards_skipped: int


def prepare_dataset(cfg: Config, restart: bool | Literal["if_changed"] = False) -> PrepareResult:
    """Run the whole data step for `cfg.data` with `cfg.model`'s limits; see the module docstring.

    Args:
        cfg: the resolved config (`data` section + `model` for emotion labels, text/code limits, feature dim).
        restart: delete this step's outputs in `data.output_dir` first (needed when the fingerprint changed);
            "if_changed" does so only when the fingerprint changed, else resumes (what the pipeline uses).
    """
    data, model = cfg.data, cfg.model
    max_text = _max_text_tokens(cfg)
    if data.features.kind == "builtin":
        _check_builtin_sizes(cfg)
    manifest, _ = resolve_inputs(data)
    storage.check_reachable(data.output_dir, "data.output_dir")
    out = _out_dir(data.output_dir)
    fp = _fingerprint(cfg, manifest)
    restart = _check_output_dir(out, fp, restart)

    scan = scan_manifest(data, model.emotion_labels)
    log.info("metadata: %d rows in, %d accepted, %d rejected", scan.rows_in, scan.table.num_rows, len(scan.rejected))
    # the folder is claimed (plan.json) only once the input is usable: a failed run never blocks the fixed rerun
    _check_scan(cfg, scan, out, restart)
    _claim_output_dir(out, fp, restart)
    tok = _tokenizer(cfg, scan, out)
    tokenize_table(scan, tok, max_text)
    if data.features.kind == "builtin":
        feat_dim = data.features.n_mels
        _ensure_codebook(scan, cfg, storage.join(out, "features"))
    else:
        feat_dim = model.input_dim
    plans = plan_shards(scan.table, data, feat_dim)

    ctx = ShardContext(data=data, out_dir=str(out), feature_dir=storage.join(out, "features"), fingerprint=fp,
                       max_mel_tokens=model.max_mel_tokens, expected_dim=model.input_dim,
                       max_codes=model.start_mel_token)
    receipts, pending = _finished_receipts(plans, out, fp)
    log.info("shards: %d planned, %d already done, %d to write", len(plans), len(receipts), len(pending))
    receipts += _run_shards(pending, ctx)
    receipts.sort(key=lambda r: (r["split"], r["index"]))

    rejected = scan.rejected + [row for r in receipts for row in r["rejected"]]
    rejected.sort(key=lambda r: (r["source"], r["line"]))
    stats = build_stats(scan, receipts, rejected)
    stats["tokenizer"] = {"path": _tokenizer_location(cfg, out, tok), "vocab_size": tok.vocab_size}
    stats["features"] = {"kind": data.features.kind, "mode": data.features.mode}
    stats["filter_shares"] = filter_shares(scan, rejected)
    _write_rejected(out, rejected)
    storage.write_json(storage.join(out, "stats.json"), stats)
    storage.write_json(storage.join(out, "dataset.json"), _dataset_json(cfg, out, tok, receipts, stats, fp))
    print(f"prepare: {stats['invariant']} ✓  ({stats['hours']['total']:.2f} h written to {out}; features "
          f"{data.features.mode})")
    for reason, n in stats["rejected_by_reason"].items():
        print(f"  rejected {reason}: {n}")
    norm, left = stats["text_normalised"], list(stats["leftover_chars"])[:10]
    print(f"  text normalised to spoken form: {norm['rows']} of {norm['of']} rows"
          + (f"; reaching the tokenizer raw: {' '.join(left)}" if left else ""))
    _report_shares(stats["filter_shares"])
    return PrepareResult(out, stats, shards_written=len(pending), shards_skipped=len(plans) - len(pending))


def _out_dir(loc: str) -> Path | str:
    """The output folder: an absolute local path, or the URI as given."""
    return loc.rstrip("/") if storage.is_remote(loc) else Path(storage.normalize(loc))


def _place(target: Path | str, make) -> None:
    """`make(scratch folder) -> file` builds a file; it is then published whole at `target` (maybe on a store)."""
    with tempfile.TemporaryDirectory(prefix="indextts-prepare-") as tmp:
        made = make(Path(tmp))
        storage.atomic_write(target, lambda f: shutil.copyfile(made, f))


def _write_rejected(out: Path | str, rejected: list[dict]) -> None:
    storage.atomic_write(storage.join(out, "rejected.parquet"), lambda tmp: pq.write_table(
        pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), tmp, compression="zstd"))


def _report_shares(shares: dict, top: int = 10) -> None:
    """Warn about filters that removed > 10 % of one speaker/emotion/language; rows over the length limits."""
    warnings = shares["warnings"]
    for w in warnings[:top]:
        log.warning("%s", format_warning(w))
    if len(warnings) > top:
        log.warning("%d more groups lost > 10 %% of their rows to one filter (stats.json filter_shares)",
                    len(warnings) - top)
    limits = shares["length_limits_by_emotion"]
    if limits:
        print("  dropped by the model's length limits (max_text_tokens, max_mel_tokens), per emotion: " + ", ".join(
            f"{emo} {sum(n for k, n in c.items() if k != 'of')} of {c['of']}" for emo, c in limits.items()))


def _max_text_tokens(cfg: Config) -> int:
    limit = cfg.data.max_text_tokens or cfg.model.max_text_tokens
    if limit > cfg.model.max_text_tokens:
        raise DataError(f"data.max_text_tokens {limit} > model.max_text_tokens {cfg.model.max_text_tokens}; "
                        "the model cannot take longer texts")
    return limit


def _check_builtin_sizes(cfg: Config) -> None:
    f, m = cfg.data.features, cfg.model
    if f.n_mels != m.input_dim:
        raise DataError(f"data.features.n_mels {f.n_mels} must equal model.input_dim {m.input_dim} "
                        "(builtin features are the model's conditioning input)")
    if f.codebook_size > m.start_mel_token:
        raise DataError(f"data.features.codebook_size {f.codebook_size} > model.start_mel_token "
                        f"{m.start_mel_token}; codes must stay below the start/stop mel tokens")


def _fingerprint(cfg: Config, manifest: Path) -> str:
    data = cfg.data.model_dump(mode="json", exclude=_NOT_FINGERPRINTED)
    model = {k: getattr(cfg.model, k) for k in ("emotion_labels", "max_text_tokens", "max_mel_tokens",
                                                "input_dim", "start_mel_token", "number_text_tokens")}
    tokenizer = storage.sha256(cfg.data.tokenizer) if cfg.data.tokenizer else "trained"
    blob = json.dumps({"data": data, "model": model, "manifest": sha256_file(manifest), "tokenizer": tokenizer,
                       "schema_version": SCHEMA_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_output_dir(out: Path | str, fp: str, restart: bool | str) -> bool:
    """Whether this run restarts `out` (resolving "if_changed"); refuses another fingerprint. Writes nothing."""
    plan_file = storage.join(out, "plan.json")
    old = storage.read_json(plan_file).get("fingerprint") if storage.is_file(plan_file) else None
    if restart == "if_changed":
        return old is not None and old != fp
    if not restart and old is not None and old != fp:
        raise DataError(f"{out} was prepared from another config/manifest/tokenizer (fingerprint {old[:12]}"
                        f" != {fp[:12]}); use another data.output_dir or rerun with --restart")
    return bool(restart)


def _clear_outputs(out: Path | str) -> None:
    for name in OUTPUTS:
        storage.delete(storage.join(out, name))


def _check_scan(cfg: Config, scan: MetadataScan, out: Path | str, restart: bool) -> None:
    """Refuse, before `out` is claimed, an input that cannot give a dataset: no row accepted (its rejections
    still go to `rejected.parquet`), precomputed codes with builtin features, more characters than the model's
    text vocabulary."""
    whole = nothing_accepted(scan)
    if whole:
        if restart:
            _clear_outputs(out)
        storage.makedirs(out)
        storage.delete(storage.join(out, "dataset.json"))
        _write_rejected(out, scan.rejected)
        raise DataError(f"{whole}; every row is in {storage.join(out, 'rejected.parquet')}")
    if cfg.data.features.kind == "builtin" and pc.any(pc.is_valid(scan.table.column("codes_path"))).as_py():
        raise DataError("the manifest has precomputed codes_path (MaskGCT codes) but data.features.kind is "
                        "builtin, whose codes differ; use features.kind w2vbert-maskgct")
    limit = cfg.model.number_text_tokens
    if cfg.data.tokenizer:
        vocab = load_tokenizer(storage.cached_copy(cfg.data.tokenizer)).vocab_size
        if vocab > limit:
            raise DataError(f"tokenizer {cfg.data.tokenizer} has {vocab} pieces > model.number_text_tokens {limit}; "
                            f"set model.number_text_tokens={vocab} (the text embedding follows the tokenizer)")
        return
    need = min_vocab_size(scan.table.column("text_norm").to_pylist())
    if need > limit:
        fix = -(-max(need, cfg.data.tokenizer_vocab_size) // 64) * 64
        raise DataError(f"the corpus has {need - 4} distinct characters: a tokenizer covering them needs at least "
                        f"{need} pieces > model.number_text_tokens {limit}; set model.number_text_tokens={fix} "
                        f"data.tokenizer_vocab_size={fix} (the model's text embedding must hold every piece)")


def _claim_output_dir(out: Path | str, fp: str, restart: bool) -> None:
    if restart:
        _clear_outputs(out)
    storage.makedirs(out)
    storage.delete(storage.join(out, "dataset.json"))  # its presence means "complete"; rewritten at the end
    if not storage.is_remote(out):  # a store has no temp objects: an upload is whole or absent
        for stale in [*out.glob("*/.*.tmp"), *out.glob(".*.tmp")]:  # left by a killed run, never visible shards
            stale.unlink()
    storage.write_json(storage.join(out, "plan.json"), {"fingerprint": fp, "schema_version": SCHEMA_VERSION})


def _tokenizer(cfg: Config, scan: MetadataScan, out: Path | str) -> Tokenizer:
    data = cfg.data
    if data.tokenizer:
        tok = load_tokenizer(storage.cached_copy(data.tokenizer))
    else:
        path = storage.join(out, "bpe.model")
        if not storage.is_file(path):  # same fingerprint = same texts = the same model, so a rerun reuses it
            texts = scan.table.column("text_norm").to_pylist()
            # at least every character of the corpus (_check_scan made sure the model holds that many)
            vocab = max(data.tokenizer_vocab_size, min_vocab_size(texts))
            log.info("training a %d-piece BPE tokenizer on %d texts -> %s", vocab, len(texts), path)
            _place(path, lambda tmp: train_tokenizer(texts, tmp / "bpe", vocab, character_coverage=1.0))
        tok = load_tokenizer(storage.cached_copy(path))
    if tok.vocab_size > cfg.model.number_text_tokens:
        raise DataError(f"tokenizer {tok.path} has {tok.vocab_size} pieces > model.number_text_tokens "
                        f"{cfg.model.number_text_tokens}; use a smaller vocabulary or a bigger model")
    return tok


def _ensure_codebook(scan: MetadataScan, cfg: Config, feature_dir: Path | str) -> None:
    """Fit the builtin k-means codebook on a deterministic sample of the accepted rows (once)."""
    fcfg = cfg.data.features
    target = storage.join(feature_dir, codebook_path(Path()).name)
    if storage.is_file(target):
        return
    t = scan.table
    ids = t.column("id").to_pylist()
    order = np.argsort(np.array([stable_hash(i, f"kmeans{fcfg.kmeans_seed}") for i in ids], dtype=np.uint64))
    paths, durations = t.column("audio_path").to_pylist(), t.column("duration").to_numpy()
    counts = {"used": 0, "rejected": 0}

    def wavs():
        for i in order:
            got = load_checked(paths[i], cfg.data, durations[i])
            if isinstance(got, Rejection):
                counts["rejected"] += 1  # the shard worker rejects and reports this row
                continue
            counts["used"] += 1
            yield got.wav16k

    _place(target, lambda tmp: fit_codebook(fcfg, wavs(), tmp))
    log.info("builtin codebook: %d codes fitted on %d files (%d skipped: rejected audio)",
             fcfg.codebook_size, counts["used"], counts["rejected"])


def _finished_receipts(plans: list[ShardPlan], out: Path | str, fp: str) -> tuple[list[dict], list[tuple]]:
    """Receipts of shards already complete for this plan, and (plan, key) pairs still to write."""
    done, pending = [], []
    for plan in plans:
        key = plan.key(fp)
        receipt_path = storage.join(out, plan.receipt_name)
        if storage.is_file(receipt_path):
            receipt = storage.read_json(receipt_path)
            shard = storage.join(out, receipt["file"]) if receipt.get("file") else None
            if receipt.get("key") == key and (shard is None or (storage.is_file(shard)
                                                                and storage.size(shard) == receipt["bytes"])):
                done.append(receipt)
                continue
        pending.append((plan, key))
    return done, pending


def _run_shards(pending: list[tuple], ctx: ShardContext) -> list[dict]:
    """Write the pending shards with Ray Data (one item per shard, one extractor per worker), or in this
    process when `data.workers` is 0."""
    if not pending:
        return []
    if ctx.data.workers == 0:
        worker = ShardWorker(ctx)
        receipts = []
        for plan, key in pending:
            receipts.append(json.loads(worker({"split": plan.split, "index": plan.index, "key": key,
                                               "rows": plan.ipc_bytes()})["receipt"]))
            _log_shard(receipts[-1], len(receipts), len(pending))
        return receipts
    import ray

    if not ray.is_initialized():
        from indextts_ray.ray_connect import connect

        # RAY_ADDRESS, a live `ray start` cluster or a local Ray (never a stale one), its address passed on;
        # with the dashboard: later steps on this Ray (Train's cleanup of stopped runs) need its State API
        connect(log_to_driver=True)
    items = [{"split": p.split, "index": p.index, "key": key, "rows": p.ipc_bytes()} for p, key in pending]
    data = ctx.data
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(ShardWorker, fn_constructor_kwargs={"ctx": ctx},
                compute=ray.data.ActorPoolStrategy(size=min(data.workers, len(items))),
                num_cpus=data.cpus_per_worker, num_gpus=data.gpus_per_worker or None)
    receipts = []
    for row in ds.iter_rows():
        receipt = json.loads(row["receipt"])
        receipts.append(receipt)
        _log_shard(receipt, len(receipts), len(items))
    return receipts


def _log_shard(receipt: dict, done: int, total: int) -> None:
    log.info("shard %s/%05d: %d rows, %d rejected [%d/%d]", receipt["split"], receipt["index"], receipt["rows"],
             len(receipt["rejected"]), done, total)


def _tokenizer_location(cfg: Config, out: Path | str, tok: Tokenizer) -> str:
    """Where the tokenizer lives (not the local copy read from a store): data.tokenizer, or <out>/bpe.model."""
    if cfg.data.tokenizer:
        return cfg.data.tokenizer if storage.is_remote(cfg.data.tokenizer) else str(tok.path.absolute())
    return storage.join(out, "bpe.model")


def _dataset_json(cfg: Config, out: Path | str, tok: Tokenizer, receipts: list[dict], stats: dict,
                  fp: str) -> dict:
    tok_path = _tokenizer_location(cfg, out, tok)
    if tok_path.startswith(str(out).rstrip("/") + "/"):
        tok_path = tok_path[len(str(out).rstrip("/")) + 1:]  # relative = moves with the folder
    ext = next((r["extractor"] for r in receipts if r.get("extractor")), None)
    return {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fp,
        # mode + extractor + clip_seconds: what streaming mode rebuilds the features from (`stream_features.py`)
        "features": {"kind": cfg.data.features.kind, "mode": cfg.data.features.mode,
                     "dim": ext["dim"] if ext else None,
                     "codebook_size": ext["codebook_size"] if ext else None, "frame_rate": FRAME_RATE,
                     "extractor": cfg.data.features.model_dump(mode="json"),
                     "clip_seconds": cfg.data.prompt.max_seconds, "sample_rate": cfg.data.feature_sample_rate},
        "tokenizer": {"path": tok_path, "sha256": tok.sha256, "vocab_size": tok.vocab_size, "unk_id": tok.unk_id},
        "emotion_labels": list(cfg.model.emotion_labels),
        "counts": {"rows_in": stats["rows_in"], **{k: v for k, v in stats["rows_written"].items()},
                   "rejected": stats["rows_rejected"]},
        "hours": stats["hours"],
        "shards": {split: [{"file": r["file"], "rows": r["rows"], "bytes": r["bytes"], "sha256": r["sha256"]}
                           for r in receipts if r["split"] == split and r["file"]] for split in ("train", "val")},
    }
