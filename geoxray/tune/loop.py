"""The training loop each Ray Train worker runs: transformers + peft LoRA on the base model,
data from the Ray Data shard, a checkpoint (adapter + optimiser + history) after every
`save_every_steps` steps and every epoch, and a restart that resumes from the latest one.

Resume: Ray Train hands the latest checkpoint to a restarted worker group (a worker death,
up to `max_failures`) and to a rerun of the same run folder. The loop restores the LoRA
weights, the optimiser, the schedule and the loss history, and skips the batches of the
epoch it had already trained on (the epoch's shuffle is seeded, so the order is the same).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.pt"


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0 (transformers' cosine schedule)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _rows(batch: dict) -> list[dict]:
    n = len(batch["input_ids"])
    return [{k: v[i] for k, v in batch.items() if k != "task"} for i in range(n)]


def train_loop(config: dict) -> None:
    import ray.train
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict
    from transformers import Qwen2VLForConditionalGeneration

    from geoxray.tune.examples import collate

    tc = config["tune"]
    torch.manual_seed(tc["seed"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = Qwen2VLForConditionalGeneration.from_pretrained(config["model_dir"],
                                                            dtype=torch.float32)
    lora = LoraConfig(r=tc["r"], lora_alpha=tc["alpha"], lora_dropout=tc["dropout"],
                      target_modules=tc["target_modules"], bias="none")
    model = get_peft_model(model, lora)  # freezes the base: only LoRA weights train
    if tc["freeze_vision"]:
        bad = [n for n, p in model.named_parameters() if p.requires_grad
               and (".visual." in n or "merger" in n)]
        if bad:
            raise ValueError(f"tune.target_modules reaches the frozen vision tower: {bad[:3]}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc["weight_decay"])
    steps_per_epoch = config["steps_per_epoch"]
    total = steps_per_epoch * tc["epochs"]
    warmup = math.ceil(tc["warmup_ratio"] * total)
    state = {"epoch": 0, "step": 0, "step_in_epoch": 0, "history": [], "val": [],
             "restored_from_step": None, "attempt_starts": []}

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            from safetensors.torch import load_file
            set_peft_model_state_dict(model, load_file(str(Path(d) / "adapter_model.safetensors")))
            opt.load_state_dict(torch.load(Path(d) / OPTIMIZER_FILE, weights_only=True))
            state = json.loads((Path(d) / STATE_FILE).read_text())
            state["restored_from_step"] = state["step"]
    state["attempt_starts"].append(state["step"])
    ddp = ray.train.torch.prepare_model(model) if world > 1 else model
    pad_id = config["pad_id"]

    def save(metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                model.save_pretrained(d)  # adapter_config.json + adapter_model.safetensors
                torch.save(opt.state_dict(), Path(d) / OPTIMIZER_FILE)
                (Path(d) / STATE_FILE).write_text(json.dumps(state))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d)
                             if rank == 0 else None)

    def val_loss() -> float | None:
        shard = ray.train.get_dataset_shard("val")
        if shard is None:
            return None
        total_loss, tokens = torch.zeros(()), torch.zeros(())
        model.eval()
        with torch.no_grad():
            for batch in shard.iter_batches(batch_size=tc["batch_size"] * 4, batch_format="numpy"):
                b = collate(_rows(batch), pad_id)
                n = (b["labels"][:, 1:] != -100).sum()
                total_loss += model(**b).loss.detach() * n
                tokens += n
        model.train()
        if world > 1:
            import torch.distributed as dist
            dist.all_reduce(total_loss)
            dist.all_reduce(tokens)
        return float(total_loss / tokens) if tokens > 0 else None

    model.train()
    shard = ray.train.get_dataset_shard("train")
    micro = tc["batch_size"]
    while state["epoch"] < tc["epochs"]:
        epoch = state["epoch"]
        batches = shard.iter_batches(batch_size=micro, batch_format="numpy",
                                     local_shuffle_buffer_size=config["shuffle_buffer"],
                                     local_shuffle_seed=tc["seed"] + epoch)
        done_micro = state["step_in_epoch"] * tc["grad_accum"]
        acc_loss, acc_n, t0, samples, tokens = 0.0, 0, time.perf_counter(), 0, 0
        for i, batch in enumerate(batches):
            if i < done_micro:
                continue  # trained on before the restart
            b = collate(_rows(batch), pad_id)
            loss = ddp(**b).loss / tc["grad_accum"]
            loss.backward()
            acc_loss += float(loss) * tc["grad_accum"]
            acc_n += 1
            samples += len(batch["input_ids"])
            tokens += int(b["attention_mask"].sum())
            if acc_n < tc["grad_accum"]:
                continue
            torch.nn.utils.clip_grad_norm_(params, tc["max_grad_norm"])
            for g in opt.param_groups:
                g["lr"] = tc["lr"] * lr_factor(state["step"], total, warmup)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
            state["step_in_epoch"] += 1
            secs = time.perf_counter() - t0
            state["history"].append({"step": state["step"], "epoch": epoch,
                                     "loss": acc_loss / acc_n, "lr": opt.param_groups[0]["lr"],
                                     "samples_per_s": samples / secs, "tokens_per_s": tokens / secs})
            acc_loss, acc_n = 0.0, 0
            marker = Path(config["run_dir"]) / "crashed_once"
            if tc["crash_after_steps"] and state["step"] == tc["crash_after_steps"] \
                    and not marker.exists():
                marker.write_text(f"worker killed after step {state['step']}\n")
                time.sleep(5)  # the controller registers the last checkpoint meanwhile
                os._exit(17)  # a worker death (tests): Ray Train restarts from the checkpoint
            if tc["save_every_steps"] and state["step"] % tc["save_every_steps"] == 0 \
                    and state["step_in_epoch"] < steps_per_epoch:
                save({"step": state["step"], "epoch": epoch,
                      "train_loss": state["history"][-1]["loss"]})
            if state["step_in_epoch"] >= steps_per_epoch:
                break
        state["epoch"] += 1
        state["step_in_epoch"] = 0
        vl = val_loss()
        state["val"].append({"epoch": epoch, "step": state["step"], "val_loss": vl})
        last = state["history"][-1]["loss"] if state["history"] else None
        save({"step": state["step"], "epoch": epoch, "train_loss": last,
              "val_loss": vl if vl is not None else (last if last is not None else 0.0)})
