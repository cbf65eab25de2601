"""Retrieved text made safe to put in a prompt: markup stripped, instruction-like lines removed (and counted),
length capped. Pure; no I/O.

What counts as instruction-like: lines that address the model rather than describe a product: "ignore / disregard
/ forget (all) previous instructions", "you are now ...", "new instructions:", "system prompt", role tags
(``system:``, ``assistant:``, ``<|im_start|>``, ``[INST]``, ``### Instruction``), and requests to always recommend or
rank something first. A removed line is dropped whole; the count goes to the ``retrieve`` stage's summary.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

_TAG = re.compile(r"<[^>]{0,400}>")
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_ROLE_TOKEN = re.compile(r"<\|[^|<>]{1,40}\|>")   # chat-template tokens (<|im_start|>): marked before tags go
_ROLE_MARK = "\u27e6role\u27e7"
_INSTRUCTION = re.compile(
    r"(ignore|disregard|forget|override)\b.{0,40}\b(instruction|prompt|rule|above|previous|prior)"
    r"|\byou are now\b|\bnew instructions?\b|\bsystem prompt\b|\bact as\b|\bpretend (to be|you)\b"
    r"|^\s*(system|assistant|user|developer)\s*:|\u27e6role\u27e7|\[/?inst\]|###\s*(instruction|system|response)"
    r"|\b(always|must|only)\s+(recommend|rank|suggest|say|answer|output)\b"
    r"|\brecommend (this|it) (first|above all)\b",
    re.IGNORECASE)


@dataclass(frozen=True)
class Clean:
    text: str
    removed_lines: int   # instruction-like lines dropped
    truncated: bool


def sanitise(text: str, max_chars: int = 600) -> Clean:
    """Markup out, instruction-like lines out, white space collapsed per line, at most ``max_chars`` characters
    (cut at a word boundary)."""
    t = _ROLE_TOKEN.sub(_ROLE_MARK, text or "")
    t = _SCRIPT.sub(" ", t)
    t = _MD_LINK.sub(r"\1", t)
    t = re.sub(r"<\s*(br|/p|/div|/li|/h\d)\s*/?>", "\n", t, flags=re.IGNORECASE)
    t = html.unescape(_TAG.sub(" ", t))
    t = _URL.sub(" ", t)
    kept, removed = [], 0
    for line in re.split(r"[\r\n]+|(?<=[.!?])\s+(?=[A-Z<\[#])", t):
        line = " ".join(line.split())
        if not line:
            continue
        if _INSTRUCTION.search(line):
            removed += 1
            continue
        kept.append(line)
    out = " ".join(kept)
    truncated = len(out) > max_chars
    if truncated:
        cut = out[:max_chars]
        out = cut[: cut.rfind(" ")] if " " in cut else cut
    return Clean(out, removed, truncated)
