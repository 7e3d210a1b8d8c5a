"""Remove what looks like a credential from a text before it is stored or logged.

Error texts come from elsewhere (an API's error body, an exception message) and some echo
the request: `Authorization: Bearer sk-...`, `api_key=...`, a URL with `user:pass@`. Every
error geoxray keeps (predictions.error, logs, manifests) goes through `redact` first. Names
and the first characters of a key's kind ("sk-") stay readable; the secret part does not."""
from __future__ import annotations

import re

MASK = "[REDACTED]"

# (pattern, replacement): each keeps the label so a reader still sees what was removed.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization / Proxy-Authorization headers, whatever the scheme ("Bearer x", "Basic x").
    (re.compile(r"((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?:(bearer|basic|token)\s+)?"
                r"[^\s'\",}]+", re.IGNORECASE),
     lambda m: f"{m.group(1)}{(m.group(2) + ' ') if m.group(2) else ''}{MASK}"),
    # A bearer token anywhere else.
    (re.compile(r"\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE), rf"\g<1>{MASK}"),
    # key=value / "key": "value" for names that hold secrets.
    (re.compile(r"\b((?:api[_-]?key|x-api-key|access[_-]?token|refresh[_-]?token|secret|password|"
                r"passwd|token|auth)['\"]?\s*[:=]\s*['\"]?)[^\s'\",&}]+", re.IGNORECASE),
     rf"\g<1>{MASK}"),
    # Provider key shapes: OpenAI/Anthropic "sk-...", HF "hf_...", GitHub "ghp_...", AWS ids.
    (re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_-]{8,}"), rf"\g<1>-{MASK}"),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), f"hf_{MASK}"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{8,}"), MASK),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), MASK),
    # user:password@ in a URL.
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@", re.IGNORECASE), rf"\g<1>{MASK}@"),
)


def redact(text: str | None) -> str | None:
    """`text` with anything that looks like a credential replaced by [REDACTED]."""
    if not text:
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
