"""Training examples from item rows, through the SAME code evaluation uses.

An item row becomes a `Request` by `RequestBuilder.build_request` (infer/stage.py) (decode once per image set
with the stage's LRU, crop with numpy views, the task's evaluation prompt), then chat
messages by `infer.chat.chat_messages` (the layout every engine sends), then the model's own
processor (chat template + image placeholders + pixel patches), exactly what vLLM renders for
that request. The target is the task's answer JSON followed by the end-of-turn token; the
loss sees only those tokens (labels are -100 on the prompt).

`SFTExamples` is a callable class for `Dataset.map_batches`: item rows in, tensors out, one
row per item (ragged arrays: prompts and images differ in length).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from geoxray.bench.tasks import get_task
from geoxray.infer.chat import chat_messages
from geoxray.infer.images import ImageError
from geoxray.infer.stage import RequestBuilder

IGNORE = -100  # label of a token the loss skips
END_OF_TURN = "<|im_end|>"


def answer_text(task_name: str, answer: str) -> str:
    """The reply a model following the protocol gives: the task's answer JSON."""
    return get_task(task_name).answer_json(answer)


class SFTExamples:
    """item rows -> {input_ids, labels, mm_token_type_ids, pixel_values, image_grid_thw}."""

    def __init__(self, model_dir: str, image_root: str, image_cache_size: int = 64):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.builder = RequestBuilder(image_root, image_cache_size)
        self.end_id = self.processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self.skipped = 0

    def example(self, row: dict) -> dict[str, np.ndarray]:
        from PIL import Image

        request = self.builder.build_request({**row, "key": row["item_id"]})
        messages = chat_messages(request, lambda image, uuid: {"type": "image"})
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=False)
        enc = self.processor(text=[prompt], images=[Image.fromarray(np.ascontiguousarray(im))
                                                    for im in request.images],
                             return_tensors="np")
        target = self.processor.tokenizer.encode(answer_text(row["task"], row["answer"]),
                                                 add_special_tokens=False) + [self.end_id]
        prompt_ids = enc["input_ids"][0].astype(np.int64)
        input_ids = np.concatenate([prompt_ids, np.asarray(target, np.int64)])
        labels = np.concatenate([np.full(len(prompt_ids), IGNORE, np.int64),
                                 np.asarray(target, np.int64)])
        out = {"input_ids": input_ids, "labels": labels,
               "pixel_values": enc["pixel_values"].astype(np.float32),
               "image_grid_thw": enc["image_grid_thw"].astype(np.int64)}
        if "mm_token_type_ids" in enc:  # transformers 5: which tokens are image tokens
            types = enc["mm_token_type_ids"][0].astype(np.int64)
            out["mm_token_type_ids"] = np.concatenate([types, np.zeros(len(target), np.int64)])
        return out

    def __call__(self, batch: pa.Table) -> dict[str, list]:
        cols: dict[str, list] = {}
        for row in batch.to_pylist():
            try:
                ex = self.example(row)
            except ImageError:  # an unreadable image: that item is not trained on
                self.skipped += 1
                continue
            ex["task"] = row["task"]
            for k, v in ex.items():
                cols.setdefault(k, []).append(v)
        return cols


def collate(rows: list[dict[str, np.ndarray]], pad_id: int):
    """Examples -> one padded batch of torch tensors (right padding; images concatenated in
    order, as Qwen2-VL's forward expects)."""
    import torch

    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    types = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.from_numpy(np.asarray(r["input_ids"]))
        labels[i, :k] = torch.from_numpy(np.asarray(r["labels"]))
        mask[i, :k] = 1
        if "mm_token_type_ids" in r:
            types[i, :k] = torch.from_numpy(np.asarray(r["mm_token_type_ids"]))
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask,
             "pixel_values": torch.from_numpy(np.concatenate([r["pixel_values"] for r in rows])),
             "image_grid_thw": torch.from_numpy(np.concatenate([r["image_grid_thw"]
                                                                for r in rows]))}
    if "mm_token_type_ids" in rows[0]:
        batch["mm_token_type_ids"] = types
    return batch
