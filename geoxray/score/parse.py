"""Reply text -> canonical option, per decode mode. The task table holds the parsers."""
from __future__ import annotations

import re

from geoxray.bench.tasks import TaskSpec


def parse_reply(task: TaskSpec, text: str | None, mode: str) -> tuple[str | None, str | None]:
    """(option, invalid_reason). `paper`: the authors' regex on free text. `choice`: the reply
    is the constrained option itself, as shown to the model ("top left" -> "top_left")."""
    if text is None:
        return None, "no_reply"
    if mode == "choice":
        option = re.sub(r"[\s\-]+", "_", text.strip().strip('"').lower())
        by_lower = {o.lower(): o for o in task.options}
        if option in by_lower:
            return by_lower[option], None
        return None, "not_an_option"
    return task.to_option(text)
