"""`geoxray tune`: select the training items, stream them through Ray Data into a Ray Train
TorchTrainer (LoRA with peft), keep the best checkpoint by validation loss, and write

    runs/tune/<name>/adapter_config.json, adapter_model.safetensors   (standard peft layout)
    runs/tune/<name>/tune_manifest.json    data selection, settings, base model, hashes, losses
    runs/tune/<name>/loss_curve.png
    runs/tune/<name>/ray/                  Ray Train's run folder (checkpoints; resume source)

Rerunning the same command resumes from the last checkpoint (a killed run loses at most the
steps since it). `model.adapter=runs/tune/<name>` then scores the adapter.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from geoxray.config import Config, conf_dir, load_config
from geoxray.tune.config import TuneConfig, as_dict, load_tune_config

DEFAULT_DATA = "data=synth_tiny_tune"  # the tiny world with a train split (tests, the demo)
DEFAULT_PRESET = "tiny"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def split_overrides(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """Hydra overrides of the main config, the tune preset, and `tune.key=value` overrides."""
    main, preset, tune = [], DEFAULT_PRESET, []
    for arg in argv:
        if arg.startswith("tune="):
            preset = arg.split("=", 1)[1]
        elif arg.startswith("tune."):
            tune.append(arg[len("tune."):])
        else:
            main.append(arg)
    if not any(a.startswith("data=") for a in main):
        main.insert(0, DEFAULT_DATA)
    return main, preset, tune


def load(argv: list[str]) -> tuple[Config, TuneConfig, str]:
    main, preset, tune = split_overrides(argv)
    return load_config(main), load_tune_config(preset, tune, conf_dir()), preset


def base_model_dir(cfg: Config) -> Path:
    """The folder of the model to tune (the tiny model is built here); Qwen2-VL only."""
    from geoxray.infer.vllm_engine import model_folder
    from geoxray.infer.adapter import AdapterError

    if cfg.model.engine != "vllm" or cfg.model.random_weights:
        raise AdapterError(f"config key 'model': tuning needs a local vLLM model folder with "
                           f"weights; got engine={cfg.model.engine} "
                           f"random_weights={cfg.model.random_weights}")
    folder = Path(model_folder(cfg.model))
    kind = json.loads((folder / "config.json").read_text()).get("model_type") \
        if (folder / "config.json").is_file() else None
    if kind != "qwen2_vl":
        raise AdapterError(f"config key 'model.path': tuning supports Qwen2-VL checkpoints "
                           f"(model_type qwen2_vl); {folder} is {kind!r}")
    return folder


def _datasets(selection, model_dir: Path, image_root: Path, tc: TuneConfig):
    import ray

    from geoxray.tune.examples import SFTExamples

    def examples(table):
        ds = ray.data.from_arrow(table)
        return ds.map_batches(SFTExamples, batch_format="pyarrow", batch_size=32,
                              compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
                              fn_constructor_kwargs=dict(model_dir=str(model_dir),
                                                         image_root=str(image_root))
                              ).materialize()
    train = examples(selection.train)
    val = examples(selection.val) if selection.val.num_rows else None
    return train, val


def tune(cfg: Config, tc: TuneConfig, preset: str = DEFAULT_PRESET) -> Path:
    """Run (or resume) one tuning run; returns its folder."""
    from geoxray.ops.raycluster import init_ray
    from geoxray.run.benchmark import prepare_benchmark
    from geoxray.infer.adapter import adapter_hash
    from geoxray.tune.select import select_training_items

    started = time.time()
    bench = prepare_benchmark(cfg)  # data mistakes fail here, before Ray
    selection = select_training_items(bench.items_path, tc.tasks, tc.val_fraction, tc.seed,
                                      tc.max_locations, tc.max_items_per_task,
                                      tc.max_items_per_location)
    model_dir = base_model_dir(cfg)
    name = tc.name or f"{cfg.model.name}-{cfg.data.name}-{preset}"
    out = Path(tc.output_root) / name
    out.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.ray)
    train_ds, val_ds = _datasets(selection, model_dir, bench.image_root, tc)
    n_train = train_ds.count()
    per_step = tc.batch_size * tc.grad_accum * tc.num_workers
    steps_per_epoch = max(1, n_train // per_step)
    result = _fit(cfg, tc, model_dir, train_ds, val_ds, steps_per_epoch, out)
    best = _best_checkpoint(result)
    with best.as_directory() as d:
        for f in ADAPTER_FILES:
            shutil.copy2(Path(d) / f, out / f)
        state = json.loads((Path(d) / "train_state.json").read_text())
    with result.checkpoint.as_directory() as d:  # the last one holds the whole history
        last = json.loads((Path(d) / "train_state.json").read_text())
    manifest = {
        "kind": "geoxray.tune", "name": name, "preset": preset, "tune": as_dict(tc),
        "base_model": {"name": cfg.model.name, "path": cfg.model.path, "folder": str(model_dir),
                       "fingerprint": _base_fingerprint(model_dir)},
        "data": {"name": cfg.data.name, "items": str(bench.items_path), **selection.summary()},
        "adapter": {"hash": adapter_hash(out), "files": list(ADAPTER_FILES),
                    "best_step": state["step"], "best_epoch": state["epoch"] - 1},
        "training": {"examples": n_train, "steps_per_epoch": steps_per_epoch,
                     "steps": last["step"], "restarts": len(last["attempt_starts"]) - 1,
                     "attempt_starts": last["attempt_starts"],
                     "samples_per_s": _mean(last["history"], "samples_per_s"),
                     "tokens_per_s": _mean(last["history"], "tokens_per_s")},
        "history": last["history"], "validation": last["val"],
        "wall_s": round(time.time() - started, 2),
    }
    (out / "tune_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_loss_curve(out / "loss_curve.png", last["history"], last["val"], name)
    return out


def _fit(cfg: Config, tc: TuneConfig, model_dir: Path, train_ds, val_ds, steps_per_epoch: int,
         out: Path):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    from geoxray.tune.loop import train_loop

    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
    datasets = {"train": train_ds, **({"val": val_ds} if val_ds is not None else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"tune": as_dict(tc), "model_dir": str(model_dir), "pad_id": pad_id,
                           "steps_per_epoch": steps_per_epoch, "run_dir": str(out.resolve()),
                           "shuffle_buffer": max(64, tc.batch_size * tc.grad_accum * 4)},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        run_config=RunConfig(name="ray", storage_path=str(out.resolve()),
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
        datasets=datasets)
    return trainer.fit()


def _best_checkpoint(result):
    """The epoch-end checkpoint with the lowest validation loss (mid-epoch ones have none)."""
    scored = [(m["val_loss"], m["step"], c) for c, m in result.best_checkpoints
              if m.get("val_loss") is not None]
    if not scored:
        return result.checkpoint
    return min(scored, key=lambda t: (t[0], -t[1]))[2]


def _mean(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if h.get(key)]
    return round(sum(values) / len(values), 3) if values else None


def _base_fingerprint(model_dir: Path) -> str:
    from geoxray.infer.adapter import files_hash
    return files_hash(model_dir, ("config.json", "model.safetensors"))


def write_loss_curve(path: Path, history: list[dict], val: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if history:
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train")
    pts = [(v["step"], v["val_loss"]) for v in val if v.get("val_loss") is not None]
    if pts:
        ax.plot(*zip(*pts), "o-", label="validation (held-out locations)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from geoxray.config import ConfigError
    from geoxray.infer.adapter import AdapterError
    from geoxray.tune.config import TuneConfigError
    from geoxray.tune.select import TuneDataError

    import argparse

    parser = argparse.ArgumentParser(
        prog="geoxray tune", description="LoRA instruction tuning (peft on Ray Train) on a "
        "benchmark's train split -> runs/tune/NAME (adapter, manifest, loss curve). "
        "docs/tuning.md has the recipe.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: tune=tiny|paper, "
                        "tune.KEY=VALUE, model=..., data=...")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg, tc, preset = load(args.overrides)
        out = tune(cfg, tc, preset)
    except (ConfigError, TuneConfigError, TuneDataError, AdapterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = json.loads((out / "tune_manifest.json").read_text())
    print(f"tuned {m['base_model']['name']} on {m['data']['train_items']} items from "
          f"{m['data']['train_locations']} locations ({m['training']['steps']} steps, "
          f"{m['training']['samples_per_s']} samples/s); best step {m['adapter']['best_step']}")
    print(f"adapter in {out}/  (score it: geoxray eval model.adapter={out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
