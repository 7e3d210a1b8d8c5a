"""Reply text -> canonical option: the one parsing rule, stated.

Strict (what scores): the authors' regex of the task (first match wins, no match = no answer),
their own cast of the match (upper-case direction, `true`/`false`, `int()` of the index), then
the only normalisation their gold labels force: `canonical` (case; one space <-> underscore,
because the prompt spells "top left" and the gold label is "top_left").

Lenient (counted, never scored): `lenient` also folds runs of spaces, hyphens and underscores
and strips the value. A reply that only the lenient rule maps to an option ("bottom-right",
" top left") is invalid with reason `lenient_only`, so a report can show per task how many
replies such leniency would have turned into answers (score/tables.lenient_only_counts).

Decode mode `choice`: the reply is the constrained option itself as shown to the model
("top left"); the same `canonical` maps it to the stored option.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from geoxray.bench.tasks import TaskSpec

LENIENT_ONLY = "lenient_only"


def canonical(value: str) -> str:
    """The normalisation the gold labels force: lower case, a space is an underscore."""
    return value.lower().replace(" ", "_")


def lenient(value: str) -> str:
    """What a forgiving parser would accept: runs of spaces, hyphens, underscores -> "_"."""
    return re.sub(r"[\s\-_]+", "_", value.strip().lower())


class RegexParser:
    """One task's answer extractor: the authors' pattern and their cast of the match."""

    def __init__(self, pattern: str, flags: int, cast: Callable[[str], str]):
        self.pattern = re.compile(pattern, flags)
        self.cast = cast

    def raw(self, reply: str | None) -> str | None:
        """The authors' parsed value (their cast applied), or None when nothing matches."""
        if not reply:
            return None
        m = self.pattern.search(reply)
        return self.cast(m.group(1)) if m else None


# The authors' four extractors (GeoX-Bench @89d40cf): Tasks/orin_task.py and
# orin_task_random.py (direction), location_task.py and location_random_task.py
# (is_in_range), location_8_gauss.py (location), map_gauss.py and map_gauss_random.py (index).
DIRECTION = RegexParser(r'"direction"\s*:\s*"([NSEW]{1,2})"', re.IGNORECASE, str.upper)
IN_RANGE = RegexParser(r'"is_in_range"\s*:\s*(true|false)', re.IGNORECASE, str.lower)
LOCATION = RegexParser(r'"location"\s*:\s*"(.*?)"', re.IGNORECASE, str)
INDEX = RegexParser(r'"matched_aerial_index"\s*:\s*(\d+)', 0, lambda s: str(int(s)))


def _option(options: tuple[str, ...], value: str, rule: Callable[[str], str]) -> str | None:
    by_rule = {rule(o): o for o in options}
    return by_rule.get(rule(value))


def parse_reply(task: "TaskSpec", text: str | None, mode: str) -> tuple[str | None, str | None]:
    """(option, invalid_reason). Reasons: no_reply, no_answer_field, not_an_option,
    lenient_only (only the lenient rule would have found an option)."""
    if text is None:
        return None, "no_reply"
    if mode == "choice":
        value: str | None = text.strip().strip('"')  # the constrained reply, unwrapped
    else:
        value = task.parser.raw(text)
        if value is None:
            return None, "no_answer_field"
    option = _option(task.options, value, canonical)
    if option is not None:
        return option, None
    if _option(task.options, value, lenient) is not None:
        return None, LENIENT_ONLY
    return None, "not_an_option"
