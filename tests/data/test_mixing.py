import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from indextts_ray.data.bucketing import BucketingSettings, RankSchedule
from indextts_ray.data.mixing import (
    DatasetMeter,
    Mixture,
    MixtureConfig,
    check_compatible,
    dataset_bounds,
    epoch_quotas,
)
from indextts_ray.errors import DataError

S = BucketingSettings(max_tokens=240, max_batch_size=4, window=16, chunk=8)
N_A, N_B = 40, 200  # a small emotional set and a larger general one


def _lengths(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 60, n)


def _mixture(**cfg) -> Mixture:
    lengths = np.concatenate([_lengths(N_A, 0), _lengths(N_B, 1)])
    config = MixtureConfig(datasets=[{"path": "data/emo", "weight": 3}, {"path": "data/general", "weight": 1}], **cfg)
    return Mixture(config, lengths, np.array([0, N_A, N_A + N_B]))


def _rows_of(plan, dataset: int, stop=None) -> np.ndarray:
    return np.concatenate([b for b, d in zip(plan.batches[:stop], plan.dataset[:stop]) if d == dataset])


def test_shares_quotas_and_temperature():
    assert epoch_quotas(np.array([1 / 3, 2 / 3]), 10).tolist() == [3, 7]
    assert epoch_quotas(np.array([0.75, 0.25]), 240).tolist() == [180, 60]
    cfg = MixtureConfig(datasets=[{"path": "a"}, {"path": "b"}])
    assert cfg.probabilities([100, 400]) == [0.2, 0.8]  # natural sizes
    cfg = MixtureConfig(datasets=[{"path": "a"}, {"path": "b"}], temperature=2.0)
    assert cfg.probabilities([100, 400]) == [1 / 3, 2 / 3]  # sqrt: 10 vs 20
    mix = _mixture()
    assert mix.quotas.tolist() == [180, 60] and mix.epoch_rows == 240
    assert mix.summary()["emo"] == {"rows": 40, "share": 0.75, "epoch_rows": 180}


def test_3_to_1_ratio_over_an_epoch_and_over_its_first_half():
    mix = _mixture()
    plan = mix.plan(S, seed=7, epoch=0)
    a, b = plan.rows_per_dataset()
    assert abs(a - 180) < S.max_batch_size and abs(b - 60) < S.max_batch_size  # quotas, give or take one batch
    assert a / b == pytest.approx(3.0, rel=0.1)
    half = len(plan.batches) // 2
    a2, b2 = plan.rows_per_dataset(half)
    assert a2 / b2 == pytest.approx(3.0, rel=0.25)  # interleaved, not one dataset after the other
    # every batch holds rows of its own dataset only (global indices: dataset B starts at row 40)
    for rows, d in zip(plan.batches, plan.dataset):
        assert np.all((rows < N_A) if d == 0 else (rows >= N_A))


def test_upsampled_rows_repeat_evenly_and_downsampled_rows_do_not_repeat_across_epochs():
    mix = _mixture()
    plans = [mix.plan(S, seed=7, epoch=e) for e in range(3)]
    uses = np.bincount(_rows_of(plans[0], 0), minlength=N_A)
    assert set(uses.tolist()) <= {4, 5}  # 180 / 40 = 4.5 passes, each without replacement
    general = np.concatenate([_rows_of(p, 1) for p in plans])
    assert len(general) == len(set(general.tolist())) > 170  # ~180 of 200 rows: none seen twice yet


def test_plan_is_deterministic_and_depends_on_epoch_and_seed():
    a, b = _mixture(), _mixture()
    p0 = a.plan(S, seed=7, epoch=0)
    a.plan(S, seed=7, epoch=5)  # no hidden state in the object
    for other in (a.plan(S, seed=7, epoch=0), b.plan(S, seed=7, epoch=0)):
        assert len(other.batches) == len(p0.batches) and np.array_equal(other.dataset, p0.dataset)
        assert all(np.array_equal(x, y) for x, y in zip(other.batches, p0.batches))
    for other in (a.plan(S, seed=7, epoch=1), a.plan(S, seed=8, epoch=0)):
        n = min(len(other.batches), len(p0.batches))
        assert not all(np.array_equal(other.batches[i], p0.batches[i]) for i in range(n))


def _consume(plan, world_size: int, accum: int, position: int, steps: int | None = None) -> list[tuple[int, ...]]:
    """Rows of the plan entries the ranks consume, step by step from `position` (by plan index within a step)."""
    scheds = [RankSchedule(len(plan.batches), world_size, r, accum, position) for r in range(world_size)]
    n = scheds[0].steps_left if steps is None else steps
    steps_js = [sorted(j for s in scheds for j in s.micro_batches(i)) for i in range(n)]
    return [tuple(plan.batches[j]) for js in steps_js for j in js]


def test_resume_at_any_position_continues_the_same_sequence():
    full = _consume(_mixture().plan(S, seed=7, epoch=2), 2, 2, 0)
    for steps in (1, 5, 9):
        before = _consume(_mixture().plan(S, seed=7, epoch=2), 2, 2, 0, steps)
        # a fresh process rebuilds the plan and resumes at position = entries consumed
        after = _consume(_mixture().plan(S, seed=7, epoch=2), 2, 2, steps * 4)
        assert before + after == full
    # an elastic resume on 1 worker with 4 micro-batches consumes the same entries in the same order
    assert _consume(_mixture().plan(S, seed=7, epoch=2), 1, 4, 5 * 4) == full[5 * 4:]


def test_epoch_samples_sets_the_epoch_size():
    mix = _mixture(epoch_samples=80)
    assert mix.quotas.tolist() == [60, 20]
    a, b = mix.plan(S, seed=1, epoch=0).rows_per_dataset()
    assert abs(a - 60) < S.max_batch_size and abs(b - 20) < S.max_batch_size


def test_config_validation():
    with pytest.raises(ValidationError, match="weight, or none"):
        MixtureConfig(datasets=[{"path": "a", "weight": 1}, {"path": "b"}])
    with pytest.raises(ValidationError, match="not both"):
        MixtureConfig(datasets=[{"path": "a", "weight": 1}], temperature=2)
    with pytest.raises(ValidationError, match="duplicate dataset name"):
        MixtureConfig(datasets=[{"path": "x/a"}, {"path": "y/a"}])
    with pytest.raises(ValidationError, match="extra"):
        MixtureConfig(datasets=[{"path": "a", "wieght": 1}])
    with pytest.raises(DataError, match="without training rows"):
        Mixture(MixtureConfig(datasets=[{"path": "a"}, {"path": "b"}]), np.ones(3, np.int64), np.array([0, 3, 3]))


def test_dataset_bounds_with_filtered_rows():
    # dataset 0 = files 0, 1; dataset 1 = files 2, 3; file 2 lost all its rows to a speaker filter
    assert dataset_bounds(np.array([0, 0, 1, 1, 1, 3, 3]), [2, 2]).tolist() == [0, 5, 7]
    with pytest.raises(ValueError, match="ordered by file"):
        dataset_bounds(np.array([1, 0]), [1, 1])


def test_dataset_meter_token_weighted_loss():
    meter = DatasetMeter(["emo", "general"])
    meter.add(0, 2.0, 10)
    meter.add(0, 4.0, 30)
    other_rank = DatasetMeter(["emo", "general"])
    other_rank.add(1, 1.0, 5)
    summed = (np.array(meter.totals()) + np.array(other_rank.totals())).tolist()  # what an all-reduce gives
    assert meter.metrics(summed) == {"mix/emo/loss": 3.5, "mix/general/loss": 1.0}  # (20 + 120) / 40
    assert meter.metrics() == {}  # a new window


def test_real_shards_through_the_ingest_plan(tmp_path):
    """Two prepared datasets -> the ingest's corpus index -> mixture plan -> fetched rows of each batch come
    from that batch's dataset, with prompts of the same speaker and dataset."""
    from indextts_ray.data.config import PromptConfig
    from indextts_ray.data.ingest import CorpusIndex, make_spec, plan_split
    from indextts_ray.data.store import RowStore, write_shard_file
    from tests.train.conftest import make_rows

    for name, n, per_shard in (("emo", 12, 5), ("general", 30, 16)):
        for split, rows in (("train", n), ("val", 4)):
            (tmp_path / name / split).mkdir(parents=True)
            table = make_rows(rows, 2, seed=len(name), prefix=f"{name}-{split}-")
            for s, start in enumerate(range(0, rows, per_shard)):
                write_shard_file(table.slice(start, per_shard), tmp_path / name / split / f"shard-{s:05d}.arrow")
    cfg = MixtureConfig(datasets=[{"path": str(tmp_path / "emo"), "weight": 1},
                                  {"path": str(tmp_path / "general"), "weight": 1}])
    spec = make_spec([str(tmp_path / "emo"), str(tmp_path / "general")], seed=0,
                     bucketing=BucketingSettings(200, 3, 8, chunk=4), prompt=PromptConfig(),
                     mixture=cfg.model_dump(mode="json"))
    index = CorpusIndex(spec)
    assert index.dataset_bounds.tolist() == [0, 12, 42] and index.n == 50
    plan = plan_split(index, spec, "train", epoch=0)
    assert set(plan.dataset.tolist()) == {0, 1}
    store = RowStore([Path(f) for f in spec.files])
    for j, d in enumerate(plan.dataset):
        e = plan.entry(j)
        ids = store.take(np.asarray(e["rows"]), ["id"]).column("id").to_pylist()
        prompts = store.take(np.asarray(e["prompts"]), ["id"]).column("id").to_pylist()
        assert all(i.startswith(cfg.names[d] + "-train-") for i in ids)
        assert all(p.startswith("emo-train-") or p.startswith("general-train-") for p in prompts)
        assert not set(ids) & set(prompts) or len(ids) > 1  # a prompt is never its own target


def _prepared(root, tokenizer_sha: str, codebook: bytes | None):
    root.mkdir(parents=True)
    info = {"schema_version": 1, "features": {"kind": "builtin", "dim": 80, "codebook_size": 64},
            "tokenizer": {"sha256": tokenizer_sha}, "emotion_labels": ["neutral"]}
    (root / "dataset.json").write_text(json.dumps(info))
    if codebook is not None:
        (root / "features").mkdir()
        (root / "features" / "builtin_codebook.npz").write_bytes(codebook)
    return root


def test_check_compatible(tmp_path):
    a = _prepared(tmp_path / "a", "t1", b"cb")
    check_compatible([a, _prepared(tmp_path / "b", "t1", b"cb")])
    with pytest.raises(DataError, match="tokenizer/sha256"):
        check_compatible([a, _prepared(tmp_path / "c", "t2", b"cb")])
    with pytest.raises(DataError, match="features/fitted"):  # same sizes, separately fitted codebooks
        check_compatible([a, _prepared(tmp_path / "d", "t1", b"other")])
    with pytest.raises(DataError, match="prepare"):
        check_compatible([a, tmp_path / "missing"])
