"""The seven GeoX-Bench tasks: the one place that knows a task's options, answer, parser,
prompt and crop expansion. Prompts, parsing, metrics and reports all read `TASKS`.

Answers are stored as canonical option strings: "N"/"E"/"S"/"W", "true"/"false", the nine
crop names with underscores ("top_left"), and "0".."3".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

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
    """Pixel box (x0, y0, x1, y1), end-exclusive, of a named crop of a width x height image."""
    if crop == NO_CROP:
        return (0, 0, width, height)
    left, top, right, bottom = CROP_REMOVED[crop]
    return (round(left * width), round(top * height),
            width - round(right * width), height - round(bottom * height))


# --- parsers (the authors' regexes: first match wins; no match = no answer) ------------------
def _regex_parser(pattern: str, flags: int, normalise: Callable[[str], str]):
    compiled = re.compile(pattern, flags)

    def parse(reply: str | None) -> str | None:
        if not reply:
            return None
        m = compiled.search(reply)
        return normalise(m.group(1)) if m else None

    parse.pattern = compiled  # type: ignore[attr-defined]
    return parse


def _location_name(raw: str) -> str:
    # The prompt spells crops with a space ("top left"); store them as "top_left".
    return re.sub(r"[\s\-_]+", "_", raw.strip().lower())


_parse_direction = _regex_parser(r'"direction"\s*:\s*"([NSEW]{1,2})"', re.IGNORECASE, str.upper)
_parse_in_range = _regex_parser(r'"is_in_range"\s*:\s*(true|false)', re.IGNORECASE, str.lower)
_parse_location = _regex_parser(r'"location"\s*:\s*"(.*?)"', re.IGNORECASE, _location_name)
_parse_index = _regex_parser(r'"matched_aerial_index"\s*:\s*(\d+)', 0, lambda s: str(int(s)))


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
    parse: Callable[[str | None], str | None]
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

    def to_option(self, reply: str | None) -> tuple[str | None, str | None]:
        """(option, invalid_reason). A parsed value outside the options is invalid too."""
        value = self.parse(reply)
        if value is None:
            return None, "no_answer_field"
        if value not in self.options:
            return None, "not_an_option"
        return value, None


DIRECTIONS = ("N", "E", "S", "W")
BOOLS = ("true", "false")
INDICES = ("0", "1", "2", "3")

TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(1, "pose_fixed", "Pose, fixed position", "Orin4_SameLocation", "direction",
             DIRECTIONS, _parse_direction, (NO_CROP,), 1, _gold_direction),
    TaskSpec(2, "pose_random", "Pose, random position", "Orin4_SameLocation", "direction",
             DIRECTIONS, _parse_direction, CROPS, 1, _gold_direction),
    TaskSpec(3, "loc_prior", "Localization with prior", "Location4_50_in_range", "is_in_range",
             BOOLS, _parse_in_range, (NO_CROP,), 1, _gold_in_range),
    TaskSpec(4, "loc_noprior", "Localization without prior", "Location4_50_in_range",
             "is_in_range", BOOLS, _parse_in_range, CROPS, 1, _gold_in_range),
    TaskSpec(5, "intra_map", "Intra-map localization", "Orin4_SameLocation", "location",
             CROPS, _parse_location, CROPS, 1, _gold_crop),
    TaskSpec(6, "crossmap_std", "Cross-map retrieval, standard", "LocationSelection",
             "matched_aerial_index", INDICES, _parse_index, (NO_CROP,), 4, _gold_original_index),
    TaskSpec(7, "crossmap_random", "Cross-map retrieval, random", "LocationSelection",
             "matched_aerial_index", INDICES, _parse_index, CROPS, 4, _gold_original_index),
)
TASK_BY_NAME: dict[str, TaskSpec] = {t.name: t for t in TASKS}
INDEX_FOLDERS: tuple[str, ...] = tuple(dict.fromkeys(t.index_folder for t in TASKS))


def get_task(name: str) -> TaskSpec:
    try:
        return TASK_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks are {list(TASK_BY_NAME)}") from None
