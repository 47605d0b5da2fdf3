"""`indextts-ray prepare` end to end on a tiny messy corpus: every rejection reason, the row invariant,
the shard schema, determinism and resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from indextts_ray import storage
from indextts_ray.cli import main
from indextts_ray.commands.prepare_cmd import load_prepare_config
from indextts_ray.data.features.base import build_extractor
from indextts_ray.data.metadata import scan_manifest, tokenize_table
from indextts_ray.data.plan import split_rows
from indextts_ray.data.prepare import prepare_dataset
from indextts_ray.data.schema import UTTERANCE_SCHEMA, decode_feats, schema_version_of
from indextts_ray.data.shards import ShardContext, build_rows
from indextts_ray.data.store import read_schema, read_table
from indextts_ray.data.tokenizer import load_tokenizer
from indextts_ray.errors import DataError
from tests.data.tiny_corpus import make_messy_corpus, tone, write_wav

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs/data/demo.yaml")
OVERRIDES = ["data.shard_rows=8", "data.workers=2", "data.cpus_per_worker=0.5", "data.split.val_fraction=0.25",
             "data.features.kmeans_sample_frames=4000"]

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    manifest, expected, n_rows = make_messy_corpus(root)
    return root, manifest, expected, n_rows


def _args(corpus, out: Path, *extra: str) -> list[str]:
    root, manifest, _, _ = corpus
    return [f"data.root={root}", f"data.manifest={manifest.name}", f"data.output_dir={out}", *OVERRIDES, *extra]


def _cfg(corpus, out: Path, *extra: str):
    return load_prepare_config(DEMO, _args(corpus, out, *extra), "tiny")


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory, ray_local) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "a"
    assert main(["prepare", "--config", DEMO, "--model", "tiny", *_args(corpus, out)]) == 0
    return out


def _digests(out: Path) -> dict[str, str]:
    files = sorted(out.glob("*/shard-*.arrow")) + [out / "rejected.parquet", out / "bpe.model"]
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _shards(out: Path) -> list[dict]:
    return [r for f in sorted(out.glob("*/shard-*.arrow")) for r in read_table(f).to_pylist()]


def test_every_rejection_reason_is_recorded(prepared, corpus):
    _, manifest, expected, _ = corpus
    rejected = pq.read_table(prepared / "rejected.parquet").to_pylist()
    got = {(r["id"] if r["id"] and r["reason"] != "duplicate_id" else f"line:{r['line']}"): r["reason"]
           for r in rejected}
    assert got == expected
    assert {r["source"] for r in rejected} == {str(manifest)}
    lines = manifest.read_bytes().split(b"\n")
    for r in rejected:  # the line number points at the row
        if r["id"]:
            assert f'"{r["id"]}"'.encode() in lines[r["line"] - 1]


def test_rows_in_equal_written_plus_rejected(prepared, corpus):
    _, _, expected, n_rows = corpus
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["rows_in"] == n_rows
    assert stats["rows_rejected"] == len(expected)
    assert stats["rows_out"] == n_rows - len(expected) == 18 + 4 + 2  # synthetic + four fixed "x_" + two "p_" rows
    assert stats["rows_out"] == sum(len(read_table(f)) for f in prepared.glob("*/shard-*.arrow"))
    assert (stats["resampled"], stats["downmixed"], stats["language_detected"], stats["blank_lines"]) == (1, 1, 1, 1)
    # prompts are drawn at training time among accepted utterances: these two speakers have one each
    assert stats["prompts"]["single_utterance_speaker_names"] == ["fragile", "lonely"]
    assert stats["prompts"]["explicit_prompts"] == 1  # x_prompted
    assert sum(stats["duration_hist"]["counts"]) == stats["rows_out"]
    assert stats["code_usage"]["fraction"] > 0.5  # the builtin codebook is used, not collapsed
    shard_rows = _shards(prepared)
    changed = sum(r["text"] != r["text_norm"] for r in shard_rows)
    assert 0 < changed < len(shard_rows)  # x_stereo's "3 apples" is spoken out, plain English is not
    assert stats["text_normalised"] == {"rows": changed, "of": stats["rows_out"]}


def test_shard_rows_follow_the_schema_and_the_rules(prepared, corpus):
    root, manifest, _, _ = corpus
    speaker_of = {}
    for line in manifest.read_bytes().split(b"\n"):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        speaker_of.setdefault(row["id"], row["speaker"])
    labels = load_prepare_config(DEMO, [], "tiny").model.emotion_labels
    vocab = load_tokenizer(prepared / "bpe.model").vocab_size
    for f in prepared.glob("*/shard-*.arrow"):
        schema = read_schema(f)
        assert schema.equals(UTTERANCE_SCHEMA) and schema.metadata == UTTERANCE_SCHEMA.metadata
        assert schema_version_of(f) == 2 and len(read_table(f)) <= 8
    rows = _shards(prepared)
    for r in rows:
        assert speaker_of[r["id"]] == r["speaker"]
        if r["id"] == "x_prompted":  # its own prompt and emotion reference files, cut to prompt.max_seconds
            for kind in ("prompt", "emo"):
                frames = r[f"{kind}_frames"]
                assert 0 < frames <= 6 * 50 and decode_feats(r[f"{kind}_feats"], frames, 32).shape == (frames, 32)
        else:
            assert r["prompt_feats"] is None and r["emo_feats"] is None and r["prompt_frames"] == r["emo_frames"] == 0
        feats = decode_feats(r["feats"], r["n_frames"], r["feat_dim"])  # the utterance's own features, stored once
        assert feats.shape == (r["n_frames"], 32) and abs(r["n_frames"] - 50 * r["duration"]) <= 2
        assert np.isfinite(feats.astype(np.float32)).all()
        assert r["n_codes"] == len(r["codes"]) and abs(r["n_codes"] - 50 * r["duration"]) <= 1
        assert max(r["codes"]) < 64 and min(r["codes"]) >= 0
        assert r["n_text"] == len(r["text_ids"]) <= 120 and max(r["text_ids"]) < vocab
        assert r["emotion_id"] == (labels.index(r["emotion"]) if r["emotion"] else -1)
    by_id = {r["id"]: r for r in rows}
    assert by_id["x_nolang"]["language"] == "en"
    # the split is the hash rule, and no id is in both
    ids = sorted(by_id)
    is_val = split_rows(ids, [by_id[i]["speaker"] for i in ids], _cfg(corpus, prepared).data.split)
    val_ids = {r["id"] for f in prepared.glob("val/shard-*.arrow") for r in read_table(f, ["id"]).to_pylist()}
    assert val_ids == {i for i, v in zip(ids, is_val) if v} and 0 < len(val_ids) < len(ids)
    dataset = json.loads((prepared / "dataset.json").read_text())
    extractor = dataset["features"].pop("extractor")  # what streaming mode rebuilds the extractor from
    assert (extractor["kind"], extractor["n_mels"], extractor["mode"]) == ("builtin", 32, "stored")
    assert dataset["features"] == {"kind": "builtin", "mode": "stored", "dim": 32, "codebook_size": 64,
                                   "frame_rate": 50, "clip_seconds": 6.0, "sample_rate": 16_000}
    assert dataset["tokenizer"]["path"] == "bpe.model" and dataset["tokenizer"]["vocab_size"] == vocab
    listed = [s["file"] for split in ("train", "val") for s in dataset["shards"][split]]
    assert sorted(listed) == sorted(str(f.relative_to(prepared)) for f in prepared.glob("*/shard-*.arrow"))


def test_rerun_skips_finished_shards(prepared, corpus):
    before = _digests(prepared)
    result = prepare_dataset(_cfg(corpus, prepared))
    assert result.shards_written == 0 and result.shards_skipped == len(list(prepared.glob("*/shard-*.arrow")))
    assert _digests(prepared) == before


def test_same_input_gives_the_same_bytes(prepared, corpus, tmp_path):
    # written without Ray this time: the execution mode must not change a byte either
    result = prepare_dataset(_cfg(corpus, tmp_path / "b", "data.workers=0"))
    assert result.shards_skipped == 0
    assert _digests(tmp_path / "b") == _digests(prepared)


def test_interrupted_run_resumes_only_unfinished_shards(prepared, corpus, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(prepared, out)
    (out / "train/shard-00001.arrow").unlink()  # killed before the rename
    (out / "receipts/train-00001.json").unlink()
    (out / "receipts/train-00002.json").unlink()  # killed between the rename and the receipt
    (out / "train/.shard-00003.arrow.x1y2.tmp").write_bytes(b"half a shard")
    result = prepare_dataset(_cfg(corpus, out, "data.workers=1"))
    assert result.shards_written == 2
    assert not list(out.glob("*/.*.tmp"))
    assert _digests(out) == _digests(prepared)


def _remote_digests(out: str) -> dict[str, str]:
    files = storage.glob(out, "shard-*.arrow", recursive=True) + [storage.join(out, n) for n in ("rejected.parquet",
                                                                                               "bpe.model")]
    return {f[len(out) + 1:]: hashlib.sha256(storage.read_bytes(f)).hexdigest() for f in files}


def test_prepare_to_s3_writes_the_same_objects_and_resumes_there(prepared, corpus, s3_bucket):
    """data.output_dir on an S3-compatible server: Ray's shard workers upload the same bytes as the local run;
    a rerun reads the receipts there and writes nothing; a lost shard (and receipt) is written again alone."""
    out = storage.join(s3_bucket, "prepared")
    assert prepare_dataset(_cfg(corpus, out)).shards_written == len(list(prepared.glob("*/shard-*.arrow")))
    assert _remote_digests(out) == _digests(prepared)
    assert storage.read_json(storage.join(out, "dataset.json")) == json.loads((prepared / "dataset.json").read_text())
    stats = storage.read_json(storage.join(out, "stats.json"))
    assert stats["tokenizer"]["path"] == f"{out}/bpe.model"
    assert stats["rows_out"] == json.loads((prepared / "stats.json").read_text())["rows_out"]

    assert prepare_dataset(_cfg(corpus, out, "data.workers=0")).shards_written == 0
    storage.delete(storage.join(out, "train/shard-00001.arrow"))
    storage.delete(storage.join(out, "receipts/train-00001.json"))
    assert prepare_dataset(_cfg(corpus, out, "data.workers=0")).shards_written == 1
    assert _remote_digests(out) == _digests(prepared)


def test_changed_config_is_refused(prepared, corpus):
    with pytest.raises(DataError, match="another config/manifest/tokenizer.*--restart"):
        prepare_dataset(_cfg(corpus, prepared, "data.split.seed=1"))


def test_changed_prompt_policy_extracts_nothing(prepared, corpus):
    """Prompts are drawn at training time: a new prompt policy reuses every shard as it is."""
    before = _digests(prepared)
    result = prepare_dataset(_cfg(corpus, prepared, "data.prompt.same_emotion=require", "data.prompt.seed=7",
                                  "data.prompt.single_utterance=self"))
    assert result.shards_written == 0 and _digests(prepared) == before


def test_missing_manifest_is_a_one_line_user_error(tmp_path, capsys):
    code = main(["prepare", "--config", DEMO, "--model", "tiny", f"data.root={tmp_path}", f"data.output_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: manifest not found") and err.count("\n") == 1


def test_builtin_features_refuse_precomputed_codes(corpus, tmp_path):
    root, manifest, _, _ = corpus
    rows = [json.loads(line) for line in manifest.read_text(errors="replace").splitlines()[:4]]
    np.save(root / "codes0.npy", np.zeros(10, dtype=np.int16))
    pre = root / "pre.jsonl"
    pre.write_text("".join(json.dumps(r | {"codes_path": "codes0.npy"}) + "\n" for r in rows))
    with pytest.raises(DataError, match="precomputed codes_path"):
        prepare_dataset(load_prepare_config(DEMO, _args(corpus, tmp_path / "o", f"data.manifest={pre.name}"), "tiny"))


def test_precomputed_codes_are_used_and_checked(prepared, corpus, tmp_path):
    """IndexTTS2 community manifests: codes come from codes_path (checked), not from the extractor."""
    root = tmp_path / "pre"
    rows = []
    for i, (n_codes, hi) in enumerate([(100, 63), (100, 64), (60, 5), (100, 5)]):
        audio = f"a{i}.wav"
        write_wav(root / audio, tone(2.0, seed=i))
        codes = f"c{i}.npy"
        np.save(root / codes, np.linspace(0, hi, n_codes).astype(np.int64)[None, :])  # (1, T) like community files
        rows.append({"id": f"u{i}", "audio_path": audio, "text": "hello world", "speaker": "s", "language": "en",
                     "duration": 2.0, "codes_path": codes, "condition_path": "cond.npy", "text_len": 2})
    rows.append(rows[0] | {"id": "u_missing", "codes_path": "nope.npy"})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_prepare_config(DEMO, [f"data.root={root}", "data.manifest=m.jsonl", "data.format=auto"], "tiny")
    scan = scan_manifest(cfg.data, cfg.model.emotion_labels)
    assert scan.format == "indextts_precomputed" and scan.ignored_fields == {"condition_path": 5, "text_len": 5}
    assert [(r["id"], r["reason"]) for r in scan.rejected] == [("u_missing", "bad_codes")]
    tokenize_table(scan, load_tokenizer(prepared / "bpe.model"), 120)
    ex = build_extractor(cfg.data.features, prepared / "features")
    ctx = ShardContext(cfg.data, str(tmp_path), str(prepared / "features"), "fp", 400, 32, 64)
    table, rejected, stats = build_rows(scan.table, ex, ctx)
    assert table.column("id").to_pylist() == ["u0", "u3"]
    assert table.column("codes").to_pylist()[0] == np.linspace(0, 63, 100).astype(int).tolist()
    assert {r["id"]: r["reason"] for r in rejected} == {"u1": "bad_codes", "u2": "bad_codes"}  # range, length
    assert stats["counts"]["precomputed_codes"] == 2


def test_feature_size_mismatch_fails_before_any_work(corpus, tmp_path):
    with pytest.raises(DataError, match="n_mels 16 must equal model.input_dim 32"):
        prepare_dataset(_cfg(corpus, tmp_path / "o", "data.features.n_mels=16"))
    assert not (tmp_path / "o").exists()


def test_restart_deletes_only_this_steps_outputs(tmp_path):
    from indextts_ray.data.prepare import _check_output_dir, _claim_output_dir

    out = tmp_path / "o"
    (out / "train").mkdir(parents=True)
    (out / "train/shard-00000.arrow").write_bytes(b"x")
    (out / "plan.json").write_text(json.dumps({"fingerprint": "old"}))
    (out / "dataset.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="--restart"):
        _check_output_dir(out, "new", restart=False)
    assert (out / "plan.json").is_file() and (out / "train/shard-00000.arrow").is_file()  # the check writes nothing
    _claim_output_dir(out, "new", restart=_check_output_dir(out, "new", restart=True))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "plan.json"]
    assert json.loads((out / "plan.json").read_text())["fingerprint"] == "new"


def test_ingest_stream_serves_the_plan_in_order_with_under_one_cpu_free(prepared):
    """Inside training the workers hold fractions of every CPU: the stream must not wait for a whole free one.
    A rank's stream serves exactly its cursor's plan entries, in order, each target with a prompt of its speaker."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from indextts_ray.data.bucketing import BucketingSettings
    from indextts_ray.data.config import PromptConfig
    from indextts_ray.data.ingest import (
        make_spec,
        micro_batches,
        planner_actor,
        rank_dataset,
        release_planner,
    )

    @ray.remote(num_cpus=1.5)  # of the session's 2
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote())
    spec = make_spec([str(prepared)], seed=0, bucketing=BucketingSettings(400, 8, 64),
                     prompt=PromptConfig(single_utterance="self"), fetch_cpus=0.1, run_key="stream-test")
    planner = planner_actor(spec)
    pool = ThreadPoolExecutor(1)  # no `with`: its exit would wait for a hung read forever
    try:
        n = ray.get(planner.n_entries.remote("train", 1))
        cursor = list(range(n - 1, -1, -1))  # any order: the stream follows the cursor
        ray.get(planner.set_cursor.remote("train", 0, 1, cursor))
        it = rank_dataset(spec, "train", 0).iterator()
        tables = pool.submit(lambda: list(micro_batches(it))).result(timeout=120)
    finally:
        pool.shutdown(wait=False)
        ray.kill(holder)
        release_planner(spec)
    assert [t.column("entry")[0].as_py() for t in tables] == cursor
    rows = [r for t in tables for r in t.to_pylist()]
    train = {r["id"]: r for r in read_table_rows(prepared, "train")}
    assert sorted(r["id"] for r in rows) == sorted(train)  # every train row once (singles prompt themselves)
    for r in rows:
        if r["prompt_id"] == "@" + r["id"]:  # its own prompt_audio_path, stored with the row
            assert train[r["id"]]["prompt_feats"] == r["prompt_feats"]
        elif r["prompt_id"] != r["id"]:
            assert r["prompt_id"] in train and train[r["prompt_id"]]["speaker"] == r["speaker"]
        assert r["prompt_frames"] <= spec.max_prompt_frames and len(r["prompt_feats"]) == 2 * 32 * r["prompt_frames"]


def read_table_rows(prepared: Path, split: str) -> list[dict]:
    return [r for f in sorted(prepared.glob(f"{split}/shard-*.arrow")) for r in read_table(f).to_pylist()]
