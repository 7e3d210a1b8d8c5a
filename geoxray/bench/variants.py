"""Geometric variants of an item whose gold is known by construction (consistency checks and
the label prior of `geoxray.score.debias`).

A variant acts on the images exactly as the model sees them (after the item's crop) and on
the gold, through a label map: `label_map(task, variant)[o]` is the option at which the
content that answered `o` lands. Image frame conventions: up = north, right = east (the
synthetic world's tiles and the authors'); rotations are clockwise in quarter turns.

    pose_fixed, pose_random      rot90/180/270 of the satellite tile. The ground view is
                                 unchanged, so (prompt unchanged) the camera's direction in
                                 the image frame turns with the tile: N -> E -> S -> W -> N
                                 per quarter turn. With `state_rotation` the prompt says how
                                 the tile is turned and where north points, and the gold
                                 (a compass direction) stays as it is.
    intra_map                    rot90/180/270 of the cropped tile (the camera's position in
                                 the crop turns: top_left -> top_right -> ...), and `mirror`:
                                 tile AND ground view flipped left-right (a mirrored world;
                                 flipping the tile alone would match no world): left <-> right.
    crossmap_std, crossmap_random  shift1/2/3: the candidate order rotated left by s; the
                                 original candidate's index i becomes (i - s) mod 4.
    loc_prior, loc_noprior       rot90/180/270 of the tile: whether the camera lies within
                                 the tile does not change (identity label map).

`identity` is the unchanged item. Pure functions on (item row, images): nothing is decoded
or copied beyond the rotated arrays (np.rot90 and flips are views).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoxray.bench.tasks import CROPS, DIRECTIONS, get_task

IDENTITY = "identity"
_ROTATIONS = ("rot90", "rot180", "rot270")
_SHIFTS = ("shift1", "shift2", "shift3")

# The variants of each task (the identity is always there too).
TASK_VARIANTS: dict[str, tuple[str, ...]] = {
    "pose_fixed": _ROTATIONS, "pose_random": _ROTATIONS,
    "loc_prior": _ROTATIONS, "loc_noprior": _ROTATIONS,
    "intra_map": _ROTATIONS + ("mirror",),
    "crossmap_std": _SHIFTS, "crossmap_random": _SHIFTS,
}

# The nine crop positions on a 3 x 3 grid: (column, row), 0..2 from the top left.
_GRID = {"top_left": (0, 0), "top": (1, 0), "top_right": (2, 0), "left": (0, 1),
         "center": (1, 1), "right": (2, 1), "bottom_left": (0, 2), "bottom": (1, 2),
         "bottom_right": (2, 2)}
_AT = {v: k for k, v in _GRID.items()}
assert set(_GRID) == set(CROPS)


def variants(task: str) -> tuple[str, ...]:
    """The task's variants, identity first."""
    return (IDENTITY,) + TASK_VARIANTS[get_task(task).name]


def _quarter_turns(variant: str) -> int:
    return {"rot90": 1, "rot180": 2, "rot270": 3}.get(variant, 0)


def _turn_cell(col: int, row: int, turns: int) -> tuple[int, int]:
    for _ in range(turns):  # clockwise: pixel (row r, col c) -> (row c, col 2 - r)
        col, row = 2 - row, col
    return col, row


def label_map(task: str, variant: str) -> dict[str, str]:
    """Where each option's content lands under `variant` (the gold moves the same way)."""
    spec = get_task(task)
    if variant == IDENTITY:
        return {o: o for o in spec.options}
    if variant not in TASK_VARIANTS[spec.name]:
        raise ValueError(f"task {task} has no variant {variant!r}; it has {variants(task)}")
    if spec.name.startswith("pose"):
        k = _quarter_turns(variant)
        return {o: DIRECTIONS[(DIRECTIONS.index(o) + k) % 4] for o in spec.options}
    if spec.name.startswith("loc"):
        return {o: o for o in spec.options}
    if spec.name == "intra_map":
        if variant == "mirror":
            return {o: _AT[(2 - _GRID[o][0], _GRID[o][1])] for o in spec.options}
        k = _quarter_turns(variant)
        return {o: _AT[_turn_cell(*_GRID[o], k)] for o in spec.options}
    s = int(variant.removeprefix("shift"))  # crossmap
    return {o: str((int(o) - s) % 4) for o in spec.options}


def permutation(task: str, variant: str) -> np.ndarray:
    """`label_map` as indices: perm[j] = index of the label where option j's content lands."""
    options = get_task(task).options
    mapping = label_map(task, variant)
    return np.array([options.index(mapping[o]) for o in options], dtype=np.int64)


def inverse_label(task: str, variant: str, label: str | None) -> str | None:
    """The option of the original item whose content sits at `label` in the variant."""
    if label is None:
        return None
    back = {v: k for k, v in label_map(task, variant).items()}
    return back.get(label)


@dataclass(frozen=True)
class VariantItem:
    row: dict  # the item row: answer mapped, `variant`, `base_item_id`, own item_id
    images: list[np.ndarray]  # in prompt order, as the model sees them
    sources: list[int]  # position i shows (a transform of) the original image sources[i]
    uuid_suffixes: list[str]  # uuid of position i = original uuid of sources[i] + suffix
                              # ("" where the pixels are the original's: its cache entry holds)
    prompt_note: str | None  # text to add to the user prompt (state_rotation), else None


def rotation_note(variant: str) -> str | None:
    """What the prompt says with `state_rotation` (None for no rotation)."""
    k = _quarter_turns(variant)
    if not k:
        return None
    north = {1: "right", 2: "bottom", 3: "left"}[k]
    return (f"Note: the satellite image is rotated {90 * k} degrees clockwise; north points "
            f"to the {north} of the image.")


def variant_row(row: dict, variant: str, *, state_rotation: bool = False) -> dict:
    """The item row of `variant`: every field kept, `answer` mapped through the label map
    (unchanged for a pose task with `state_rotation`: the prompt then says how the tile is
    turned), plus `variant`, `base_item_id` and `variant_prompt` ("stated" or "plain"); the
    item_id becomes `<item_id>~<variant>` so the prediction key differs."""
    spec = get_task(row["task"])
    mapping = label_map(spec.name, variant)  # raises for a variant the task does not have
    stated = state_rotation and spec.name.startswith("pose") and variant in _ROTATIONS
    base = row.get("base_item_id") or row["item_id"]
    return {**row, "answer": row["answer"] if stated else mapping[row["answer"]],
            "variant": variant, "base_item_id": base,
            "item_id": base if variant == IDENTITY else f"{base}~{variant}",
            "variant_prompt": "stated" if stated else "plain"}


def variant_images(task: str, images: list[np.ndarray],
                   variant: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    """(images, sources, uuid suffixes) of `variant`: see `VariantItem`."""
    spec = get_task(task)
    n_aerials = spec.n_aerials
    if len(images) != n_aerials + 1:
        raise ValueError(f"task {spec.name} sends {n_aerials + 1} images, got {len(images)}")
    label_map(spec.name, variant)  # raises for a variant the task does not have
    out, sources, suffix = list(images), list(range(len(images))), [""] * len(images)
    if variant in _ROTATIONS:
        for i in range(n_aerials):
            out[i] = np.rot90(images[i], -_quarter_turns(variant))  # clockwise
            suffix[i] = f"~{variant}"
    elif variant == "mirror":
        out = [img[:, ::-1] for img in images]  # the whole world mirrored: tile and view
        suffix = ["~mirror"] * len(images)
    elif variant in _SHIFTS:
        s = int(variant.removeprefix("shift"))
        sources = [(i + s) % n_aerials for i in range(n_aerials)] + [n_aerials]
        out = [images[j] for j in sources]  # same arrays in a new order: same uuids
    return out, sources, suffix


def transform(row: dict, images: list[np.ndarray], variant: str, *,
              state_rotation: bool = False) -> VariantItem:
    """The `variant` of an item: `variant_row` and `variant_images` (images as sent to the
    model: aerials first, ground last, each already cropped), and the prompt note when the
    rotation is stated."""
    new_row = variant_row(row, variant, state_rotation=state_rotation)
    out, sources, suffix = variant_images(row["task"], images, variant)
    note = rotation_note(variant) if new_row["variant_prompt"] == "stated" else None
    return VariantItem(new_row, out, sources, suffix, note)
