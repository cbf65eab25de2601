"""The one progress bar every long loop prints (describe, web_queries, embed, training epochs, evaluation): tqdm on
stderr whose rate and ETA come from whole batches only.

A first ETA taken from part of the first batch is wildly off (a new user saw ``1/2000 [00:17<9:49:38]``: one entity
of a batch that arrives all at once had set the rate, after tqdm's monitor thread forced a refresh mid-batch). So:

* until ``first`` units (the first whole batch) are done the line says ``ETA after the first batch`` and no rate;
* from then on rate and ETA are the mean since the bar started (``smoothing=0``), never one refresh's slice of a
  batch, so the first ETA is the first batch's rate and later ones every whole batch's so far.

Loading a model is not work: start the bar after it (as ``describe`` does) so it does not weigh on the rate.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

PENDING = "ETA after the first batch"


class Progress(tqdm):
    """``tqdm`` that shows no rate or ETA before ``first`` units are done (see the module docstring)."""

    def __init__(self, *args, first: int = 1, **kwargs) -> None:
        self.first = max(1, int(first))  # set before tqdm's __init__, which may already print the line
        kwargs.setdefault("smoothing", 0.0)
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict:
        d = super().format_dict
        total = d.get("total")
        if total and d["n"] < min(self.first, total) and not d.get("bar_format"):
            d["bar_format"] = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, " + PENDING + "{postfix}]"
        return d


def progress(iterable: Iterable | None = None, *, desc: str, unit: str, total: int | None = None, first: int = 1,
             every: int = 1, every_s: float = 0.1, disable: bool | None = False, leave: bool = True) -> Progress:
    """A ``Progress`` bar on stderr. ``first``: units in the first whole batch (1 when a unit is a batch); ``every``:
    refresh only after this many units (``miniters``); ``every_s``: at most once per this many seconds
    (``mininterval``); ``disable=None``: off when stderr is not a terminal (tqdm's rule)."""
    return Progress(iterable, total=total, desc=desc, unit=unit, first=first, miniters=max(1, every),
                    mininterval=every_s, disable=disable, leave=leave, file=sys.stderr, dynamic_ncols=False)
