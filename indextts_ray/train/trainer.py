"""Driver side: resolve paths, build the TorchTrainer for one stage, fit (or resume) it.

`run.output_dir`, `train.data_dir` (and mixture paths, `train.init_checkpoint`, `train.speaker_mapping`) may be
object-store URIs (`storage.py`): Ray Train then writes checkpoints through the store's pyarrow filesystem
(`RunConfig(storage_filesystem=...)`) and resumes from its snapshot there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from indextts_ray import storage
from indextts_ray.config import Config, config_hash, write_resolved_config
from indextts_ray.data.bucketing import BucketingSettings
from indextts_ray.data.ingest import (
    IngestDataConfig,
    IngestSpec,
    make_spec,
    planner_actor,
    rank_dataset,
    release_planner,
)
from indextts_ray.data.mixing import check_compatible
from indextts_ray.data.speakers import load_speaker_mapping
from indextts_ray.data.store import list_shards
from indextts_ray.errors import UserError
from indextts_ray.train.loop import read_finished, train_loop_per_worker
from indextts_ray.train.resume import check_resume, restart_run

log = logging.getLogger("indextts_ray.train")


def absolutize(cfg: Config, base: Path | None = None) -> Config:
    """Ray workers do not run in the repo: every path becomes absolute in the driver."""
    base = base or Path.cwd()

    def fix(p: str | None) -> str | None:
        if p is None or storage.is_remote(p):
            return p
        return storage.normalize(p, base) if not os.path.isabs(p) or storage.scheme(p) == "file" else p

    mixture = cfg.train.mixture
    if mixture is not None:
        mixture = mixture.model_copy(update={"datasets": [d.model_copy(update={"path": fix(d.path)})
                                                          for d in mixture.datasets]})
    update = {
        "train": cfg.train.model_copy(update={
            "data_dir": fix(cfg.train.data_dir),
            "mixture": mixture,
            "init_checkpoint": fix(cfg.train.init_checkpoint),
            "speaker_mapping": fix(cfg.train.speaker_mapping),
        }),
        "run": cfg.run.model_copy(update={"output_dir": fix(cfg.run.output_dir)}),
    }
    return cfg.model_copy(update=update)


def check_inputs(cfg: Config) -> None:
    tc = cfg.train
    if not tc.data_dirs:
        raise UserError("train.data_dir is not set: point it at the output of `indextts-ray prepare` "
                        "(or list several prepared datasets in train.mixture)")
    storage.check_reachable(cfg.run.output_dir, "run.output_dir")
    for path, what in ((tc.init_checkpoint, "train.init_checkpoint"), (tc.speaker_mapping, "train.speaker_mapping"),
                       *((d, "train.data_dir" if tc.mixture is None else "train.mixture") for d in tc.data_dirs)):
        if path is None:
            continue
        storage.check_reachable(path, what)
        if not storage.exists(path):
            raise UserError(f"{what}: {path} does not exist")
    for d in tc.data_dirs:
        list_shards(storage.join(d, "train"))
        list_shards(storage.join(d, "val"))
    if tc.mixture is not None:
        check_compatible(tc.data_dirs)
    check_freeze(cfg)


def check_freeze(cfg: Config) -> None:
    """Unknown `train.freeze` names fail here, before any worker starts (a worker error would be retried)."""
    import torch

    from indextts_ray.model.unifiedvoice import UnifiedVoice

    with torch.device("meta"):  # module names only: no memory, no init cost
        modules = dict(UnifiedVoice(cfg.model).named_children())
    unknown = [n for n in cfg.train.freeze if n not in modules]
    if unknown:
        raise UserError(f"train.freeze: UnifiedVoice has no module {', '.join(map(repr, unknown))}; "
                        f"its modules are {', '.join(modules)}")


def ingest_spec(cfg: Config) -> IngestSpec:
    """The data stream of a run: shard files and row counts (footers only), plan and prompt settings."""
    tc = cfg.train
    keep = sorted(load_speaker_mapping(storage.cached_copy(tc.speaker_mapping)).mapping) \
        if tc.only_mapped_speakers else None
    return make_spec(tc.data_dirs, seed=cfg.run.seed,
                     bucketing=BucketingSettings(tc.batch.max_tokens, tc.batch.max_batch_size, tc.batch.shuffle_window),
                     prompt=cfg.data.prompt, keep_speakers=keep,
                     mixture=tc.mixture.model_dump(mode="json") if tc.mixture is not None else None,
                     fetch_cpus=tc.scaling.ingest_cpus, run_key=storage.join(cfg.run.output_dir, cfg.run.name),
                     emotion_reference=tc.emotion_reference, feature_actors=tc.scaling.feature_actors,
                     feature_actor_cpus=tc.scaling.feature_actor_cpus, feature_actor_gpus=tc.scaling.feature_actor_gpus)


def build_trainer(cfg: Config, spec: IngestSpec | None = None) -> TorchTrainer:
    """`spec`: the run's ingest spec when the caller already resolved it (it reads every shard footer)."""
    tc = cfg.train
    sc = tc.scaling
    scaling = ScalingConfig(
        num_workers=tuple(sc.num_workers) if sc.elastic else sc.max_workers,
        use_gpu=sc.use_gpu,
        resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {}), **sc.resources_per_worker},
        elastic_resize_monitor_interval_s=sc.elastic_monitor_interval_s,
    )
    # a URI: Ray Train reads and writes checkpoints through the store's filesystem (each process's credentials)
    fs, storage_path = storage.resolve(cfg.run.output_dir)
    run = RunConfig(
        name=cfg.run.name,
        storage_path=storage_path,
        storage_filesystem=fs if storage.is_remote(cfg.run.output_dir) else None,
        checkpoint_config=CheckpointConfig(num_to_keep=tc.checkpoint.keep),
        failure_config=FailureConfig(max_failures=sc.failures),
        worker_runtime_env={"env_vars": {
            "WANDB_MODE": os.environ.get("WANDB_MODE", tc.logging.wandb_mode),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH")])),
        }},
    )
    spec = spec or ingest_spec(cfg)
    if spec.stream is not None:
        log.info("features: streaming (computed from the audio in the stream): %d extractor actor(s) per rank and "
                 "split, %g CPU and %g GPU each", spec.stream.actors, spec.stream.cpus, spec.stream.gpus)
    planner_actor(spec)  # lives as long as this driver: plans survive worker-group restarts and resizes
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**cfg.model_dump(mode="json"), "_ingest": spec},
        scaling_config=scaling,
        run_config=run,
        datasets={split: rank_dataset(spec, split, 0) for split in ("train", "val")},
        dataset_config=IngestDataConfig(spec),
    )


def run_training(cfg: Config, restart: bool = False):
    """Fit one stage. Rerunning with the same run.output_dir + run.name resumes, or returns None at once when
    the run finished with the same config (no Ray start); `restart` deletes the run folder first (step 0)."""
    cfg = absolutize(cfg)
    check_inputs(cfg)
    run_dir = storage.join(cfg.run.output_dir, cfg.run.name)
    if restart and restart_run(run_dir):
        log.info("--restart: deleted %s; training from step 0", run_dir)
    write_resolved_config(cfg, run_dir)
    finished = read_finished(run_dir)
    if finished is not None and finished["config_hash"] == config_hash(cfg):
        log.info("%s finished at step %d with this config: nothing to do (change e.g. train.max_steps or "
                 "train.epochs to train on)", run_dir, finished["step"])
        return None
    spec = ingest_spec(cfg)
    for change in check_resume(run_dir, cfg, spec):  # refuses other data, plan or architecture before Ray starts
        log.info("resume: %s (from this config)", change)
    if not ray.is_initialized():
        from indextts_ray.ray_connect import connect

        connect(log_to_driver=True)  # RAY_ADDRESS, a live `ray start` cluster, or a local Ray; never a stale one
    trainer = build_trainer(cfg, spec)
    try:
        result = trainer.fit()
    finally:
        release_planner(spec)
    log.info("stage %d finished: %s", cfg.train.stage, result.checkpoint.path if result.checkpoint else "no checkpoint")
    return result
