"""Untrusted text (model output, prompts, names from a run's files) made safe and honest to show.

The page shows text in three ways: text boxes and table cells (the browser shows them as text, never as markup),
and Markdown panels (notes and the run header, which do render markup). Whatever the channel, what is shown is
the text as written, with nothing hidden: characters that a text box would swallow or act on become visible marks,
a prompt or completion too long to show is cut with a marker that gives its full length, and text bound for
Markdown is escaped so that ``<img ...>``, ``[x](javascript:...)`` or ``![](http://...)`` stay literal.
"""
from __future__ import annotations

import string

DISPLAY_CHARS = 50_000
"""A prompt or completion longer than this is cut for display (about 12k tokens: far beyond any completion of a
realistic ``max_new_tokens``, while a megabyte of text would stall the page's text box)."""

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
"""The bidirectional marks, embeddings, overrides and isolates: invisible, and they reorder the text around them, so
a completion could look like something else ("Trojan Source", Boucher & Anderson 2021)."""


def _visible_table() -> dict[int, str]:
    table = {c: chr(0x2400 + c) for c in range(32) if chr(c) not in "\n\t"}  # ESC -> ␛, NUL -> ␀
    table[0x7F] = "\u2421"  # DEL -> ␡
    table.update({c: f"\u27e8U+{c:04X}\u27e9" for c in range(0x80, 0xA0)})  # C1 controls -> ⟨U+0085⟩
    table.update({ord(c): f"\u27e8U+{ord(c):04X}\u27e9" for c in BIDI_CONTROLS})
    table.update({c: "\ufffd" for c in range(0xD800, 0xE000)})  # lone surrogates (a JSON "\ud800") -> �
    return table


VISIBLE = _visible_table()


def visible(text: str) -> str:
    """``text`` with every character a text box would hide, act on or fail to encode made visible: C0 control
    characters but newline and tab, and DEL, as their Unicode control pictures (``\\x1b`` -> ``␛``, NUL -> ``␀``);
    C1 controls and the bidirectional controls (``BIDI_CONTROLS``) as ``⟨U+202E⟩``; a lone surrogate, which
    cannot be sent as UTF-8, as ``�``. Everything else, markup included, is kept as is."""
    return text.translate(VISIBLE)


def for_display(text: str, source: str, limit: int = DISPLAY_CHARS) -> str:
    """``visible(text)``, or for a text longer than ``limit`` characters its first ``limit`` and a last line that
    says it was cut, gives the full length and names ``source`` (the file that holds all of it)."""
    if len(text) <= limit:
        return visible(text)
    return (visible(text[:limit]) + f"\n\n[cut for display: the first {limit:,} of {len(text):,} characters are "
                                     f"shown; {source} holds the whole text]")


MARKDOWN_SPECIAL = frozenset(string.punctuation)
"""Every ASCII punctuation character: CommonMark lets a backslash make any of them literal, and between them they
start every piece of Markdown and HTML syntax (``<``, ``[``, ``!``, ``*``, ``` ` ```, ``$``, the ``:`` of an
autolink, ...)."""


def markdown_literal(text: str) -> str:
    """``text`` as Markdown that renders as exactly this text on one line: ``visible``, whitespace runs (newlines
    included) made one space, and every ASCII punctuation character backslash-escaped."""
    flat = " ".join(visible(text).split())
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in flat)
