"""Instruction-tuning export: the train split of a benchmark as chat-format JSONL.

One line per item, in the "messages" + "images" layout that LLaMA-Factory (sharegpt
formatting) and ms-swift read directly:

    {"messages": [{"role": "system", "content": <task system prompt>},
                  {"role": "user", "content": "<image><image>..."},
                  {"role": "assistant", "content": "{\"direction\": \"N\"}"}],
     "images": [<aerial 0>, ..., <ground>]}

The user text holds one `<image>` per entry of `images`, in the paper's order (aerials first).
A task's `<task>_sft` prompt (the authors' `pose_fixed_sft`: answer with the JSON only) is used
where one exists, else the task's evaluation prompt. The answer is the task's answer JSON.
Crops have no file of their own, so cropped aerials of the "random position" tasks are written
once each under `<out_dir>/crops/`. A `dataset_info.json` registers the file for LLaMA-Factory.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.compute as pc

from geoxray.bench.prompts import load_prompts
from geoxray.bench.tasks import NO_CROP, crop_box, get_task

DATASET_NAME = "geoxbench_sft"


def _crop_file(image_root: Path, rel: str, crop: str, crops_dir: Path, done: dict) -> Path | None:
    """The cropped copy of an aerial (made on first use); None if the source is unreadable."""
    key = (rel, crop)
    if key not in done:
        src = image_root / rel
        img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED) if src.is_file() else None
        if img is None:
            done[key] = None
        else:
            x0, y0, x1, y1 = crop_box(crop, img.shape[1], img.shape[0])
            out = crops_dir / crop / rel.lstrip("./")
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), img[y0:y1, x0:x1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95] if out.suffix.lower() in (".jpg", ".jpeg")
                        else [cv2.IMWRITE_PNG_COMPRESSION, 3])
            done[key] = out
    return done[key]


def export_sft(items: pa.Table, image_root: str | Path, out_dir: str | Path, *,
               split: str = "train", tasks: list[str] | None = None, use_sft_prompts: bool = True,
               absolute_paths: bool = True) -> Path:
    """Write `<out_dir>/train.jsonl` (+ crops/, dataset_info.json, summary.json) from an items
    table and return the JSONL path. Items whose images are missing are skipped and counted."""
    image_root, out_dir = Path(image_root).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts()
    crops_dir, done = out_dir / "crops", {}
    counts: dict[str, int] = {}
    skipped: dict[str, int] = {}
    jsonl = out_dir / f"{split}.jsonl"

    def where(path: Path) -> str:
        path = path.resolve()
        return str(path) if absolute_paths else str(path.relative_to(out_dir.resolve()))

    with jsonl.open("w") as fh:
        for row in items.filter(pc.equal(items["split"], split)).to_pylist():
            if tasks is not None and row["task"] not in tasks:
                continue
            task = get_task(row["task"])
            prompt = prompts.get(f"{task.name}_sft") if use_sft_prompts else None
            prompt = prompt or prompts[task.name]
            paths = list(row["image_paths"])
            images: list[Path | None] = []
            for n, rel in enumerate(paths):
                is_aerial = n < len(paths) - 1
                if is_aerial and row["crop"] != NO_CROP:
                    images.append(_crop_file(image_root, rel, row["crop"], crops_dir, done))
                else:
                    p = image_root / rel
                    images.append(p if p.is_file() else None)
            if any(p is None for p in images):
                skipped[task.name] = skipped.get(task.name, 0) + 1
                continue
            line = {"messages": [{"role": "system", "content": prompt.system},
                                 {"role": "user", "content": prompt.user},
                                 {"role": "assistant", "content": task.answer_json(row["answer"])}],
                    "images": [where(p) for p in images]}
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            counts[task.name] = counts.get(task.name, 0) + 1

    info = {DATASET_NAME: {"file_name": jsonl.name, "formatting": "sharegpt",
                           "columns": {"messages": "messages", "images": "images"},
                           "tags": {"role_tag": "role", "content_tag": "content",
                                    "user_tag": "user", "assistant_tag": "assistant",
                                    "system_tag": "system"}}}
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(
        {"split": split, "items": dict(sorted(counts.items())),
         "skipped_missing_image": dict(sorted(skipped.items()))}, indent=2) + "\n")
    return jsonl
