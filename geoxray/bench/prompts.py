"""The authors' exact prompts (prompts.json, MIT, shipped unchanged in bench/geoxbench/)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from geoxray.bench.index import short_hash
from geoxray.bench.tasks import TASKS


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str  # "<image>" marks where each image goes
    image_order: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return short_hash(self.system, self.user, list(self.image_order), n=16)


@lru_cache(maxsize=1)
def load_prompts() -> dict[str, Prompt]:
    raw = json.loads((resources.files("geoxray.bench") / "geoxbench" / "prompts.json").read_text())
    prompts = {k: Prompt(v["system"], v["user"], tuple(v["image_order"])) for k, v in raw.items()}
    for task in TASKS:  # the table and the prompts must agree on the images
        order = prompts[task.name].image_order
        n_images = prompts[task.name].user.count("<image>")
        if len(order) != task.n_aerials + 1 or n_images != len(order):
            raise ValueError(f"prompt {task.name}: {n_images} <image> marks, order {order}")
    return prompts


def get_prompt(task_name: str) -> Prompt:
    return load_prompts()[task_name]
