"""The seven GeoX-Bench tasks: the one place that knows a task's options, answer, parser,
prompt and crop expansion. Prompts, parsing, metrics and reports all read `TASKS`.

Answers are stored as canonical option strings: "N"/"E"/"S"/"W", "true"/"false", the nine
crop names with underscores ("top_left"), and "0".."3".
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from geoxray.bench.parse import DIRECTION, IN_RANGE, INDEX, LOCATION, RegexParser, parse_reply

# --- crops -----------------------------------------------------------------------------------
# A "random position" crop keeps 2/3 of the tile's width and height. Fractions removed from
# (left, top, right, bottom). The crop's name is where the original centre (the camera) lands
# in the cropped tile; it is the gold answer of task 5.
_S, _T = Fraction(1, 6), Fraction(1, 3)
CROP_REMOVED: dict[str, tuple[Fraction, Fraction, Fraction, Fraction]] = {
    "center": (_S, _S, _S, _S),
    "left": (_T, _S, 0, _S),
    "right": (0, _S, _T, _S),
    "top": (_S, _T, _S, 0),
    "bottom": (_S, 0, _S, _T),
    "top_left": (_T, _T, 0, 0),
    "top_right": (0, _T, _T, 0),
    "bottom_left": (_T, 0, 0, _T),
    "bottom_right": (0, 0, _T, _T),
}
CROPS: tuple[str, ...] = tuple(CROP_REMOVED)
NO_CROP = "none"


def crop_box(crop: str, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), end-exclusive, of a named crop of a width x height image:
    each removed margin rounded on its own, so opposite margins of equal fraction are equal
    (protocol=clean)."""
    if crop == NO_CROP:
        return (0, 0, width, height)
    left, top, right, bottom = CROP_REMOVED[crop]
    return (round(left * width), round(top * height),
            width - round(right * width), height - round(bottom * height))


# The authors' factors as Python floats (GeoX-Bench @89d40cf, Tasks/utils.py lines 10-21).
_PAPER_FACTORS = {"center": (1/6, 1/6, 1/6, 1/6), "left": (1/3, 1/6, 0, 1/6),
                  "right": (0, 1/6, 1/3, 1/6), "top": (1/6, 1/3, 1/6, 0),
                  "bottom": (1/6, 0, 1/6, 1/3), "top_left": (1/3, 1/3, 0, 0),
                  "top_right": (0, 1/3, 1/3, 0), "bottom_left": (1/3, 0, 0, 1/3),
                  "bottom_right": (0, 0, 1/3, 1/3)}


def pil_crop_box(crop: str, width: int, height: int) -> tuple[int, int, int, int]:
    """The box the authors' cropper gives (protocol=paper): their float edges
    `width * x1, height * y1, width * (1 - x2), height * (1 - y2)` (Tasks/utils.py lines
    43-47) rounded as PIL's `Image.crop` rounds them (`int(round(v))`, half to even)."""
    if crop == NO_CROP:
        return (0, 0, width, height)
    x1, y1, x2, y2 = _PAPER_FACTORS[crop]
    edges = (width * abs(x1), height * abs(y1), width * (1 - abs(x2)), height * (1 - abs(y2)))
    x0, y0, x1_, y1_ = (int(round(v)) for v in edges)
    return (x0, y0, x1_, y1_)


# --- gold answers from an authors' index record ----------------------------------------------
def _gold_direction(record: dict, crop: str) -> str:
    return str(record["GroundImage"]["orientation"]).upper()


def _gold_in_range(record: dict, crop: str) -> str:
    return "true" if record["GroundImage"]["in_range"] is True else "false"


def _gold_crop(record: dict, crop: str) -> str:
    return crop


def _gold_original_index(record: dict, crop: str) -> str:
    hits = [i for i, c in enumerate(record["AerialCandidates"]) if c.get("is_original") is True]
    if len(hits) != 1:
        raise ValueError(f"expected exactly one is_original candidate, found {len(hits)}")
    return str(hits[0])


# --- the table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    number: int
    name: str  # also the key of its prompt in prompts.json
    title: str
    index_folder: str  # authors' index folder holding the base records
    answer_field: str  # JSON field of the answer in a free-text reply
    options: tuple[str, ...]
    parser: RegexParser  # the authors' extractor; bench/parse.py holds the rule
    crops: tuple[str, ...]  # (NO_CROP,) or the 9 crops: one item per crop and base record
    n_aerials: int  # aerial images before the ground view in the prompt
    gold: Callable[[dict, str], str]  # (index record, crop) -> canonical gold option

    @property
    def K(self) -> int:
        return len(self.options)

    def answer_json(self, option: str) -> str:
        """The reply text a model following the protocol would give for `option`."""
        if self.answer_field == "location":
            return '{"location": "%s"}' % option.replace("_", " ")
        if self.answer_field in ("is_in_range", "matched_aerial_index"):
            return '{"%s": %s}' % (self.answer_field, option)
        return '{"%s": "%s"}' % (self.answer_field, option)

    def parse(self, reply: str | None) -> str | None:
        """The option a free-text reply gives under the strict rule, or None."""
        return self.to_option(reply)[0]

    def to_option(self, reply: str | None) -> tuple[str | None, str | None]:
        """(option, invalid_reason) of a free-text reply under the strict rule."""
        return parse_reply(self, reply, "paper")


DIRECTIONS = ("N", "E", "S", "W")
BOOLS = ("true", "false")
INDICES = ("0", "1", "2", "3")

TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(1, "pose_fixed", "Pose, fixed position", "Orin4_SameLocation", "direction",
             DIRECTIONS, DIRECTION, (NO_CROP,), 1, _gold_direction),
    TaskSpec(2, "pose_random", "Pose, random position", "Orin4_SameLocation", "direction",
             DIRECTIONS, DIRECTION, CROPS, 1, _gold_direction),
    TaskSpec(3, "loc_prior", "Localization with prior", "Location4_50_in_range", "is_in_range",
             BOOLS, IN_RANGE, (NO_CROP,), 1, _gold_in_range),
    TaskSpec(4, "loc_noprior", "Localization without prior", "Location4_50_in_range",
             "is_in_range", BOOLS, IN_RANGE, CROPS, 1, _gold_in_range),
    TaskSpec(5, "intra_map", "Intra-map localization", "Orin4_SameLocation", "location",
             CROPS, LOCATION, CROPS, 1, _gold_crop),
    TaskSpec(6, "crossmap_std", "Cross-map retrieval, standard", "LocationSelection",
             "matched_aerial_index", INDICES, INDEX, (NO_CROP,), 4, _gold_original_index),
    TaskSpec(7, "crossmap_random", "Cross-map retrieval, random", "LocationSelection",
             "matched_aerial_index", INDICES, INDEX, CROPS, 4, _gold_original_index),
)
TASK_BY_NAME: dict[str, TaskSpec] = {t.name: t for t in TASKS}
INDEX_FOLDERS: tuple[str, ...] = tuple(dict.fromkeys(t.index_folder for t in TASKS))


def get_task(name: str) -> TaskSpec:
    try:
        return TASK_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks are {list(TASK_BY_NAME)}") from None
