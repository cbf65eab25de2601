"""describe's progress line: the first ETA comes from the first batch's generation rate (a new user saw an ETA of
26 hours over the first five minutes: loading and one entity's share of a batch had set the rate)."""
from __future__ import annotations

import re
import time
from types import SimpleNamespace

from pipelines.backends.llm import Generation
from pipelines.stages import describe


class SlowStart:
    """Loads for ``load_s``, then answers batches of ``batch`` prompts, each batch at once after ``batch_s``."""

    def __init__(self, load_s: float, batch: int, batch_s: float) -> None:
        self.load_s, self.batch, self.batch_s, self.loaded = load_s, batch, batch_s, False

    def _load(self) -> None:
        if not self.loaded:
            time.sleep(self.load_s)
            self.loaded = True

    def stream(self, prompts, retry=False):
        self._load()
        for lo in range(0, len(prompts), self.batch):
            time.sleep(self.batch_s)
            for j in range(lo, min(lo + self.batch, len(prompts))):
                yield j, Generation(f"A calm, factual description number {j} of a thing people like.", 12)


class Cache:
    def __init__(self) -> None:
        self.rows: dict = {}

    def put_many(self, rows: dict) -> None:
        self.rows.update(rows)


def _seconds(s: str) -> float:
    parts = [int(p) for p in s.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def test_the_first_eta_is_the_first_batchs_rate_not_loading_or_one_entity(monkeypatch, capsys):
    monkeypatch.setattr(describe, "PROGRESS_EVERY_S", 0.0)
    n, batch, batch_s = 48, 8, 0.25                                             # 6 batches: about 1.5 s of work
    todo = [SimpleNamespace(messages=[{"role": "user", "content": str(i)}]) for i in range(n)]
    cache = Cache()
    counts = describe.generate(SlowStart(load_s=4.0, batch=batch, batch_s=batch_s), todo, [str(i) for i in range(n)],
                               cache, flush_every=batch)
    assert counts["generated"] == n and len(cache.rows) == n
    lines = [x for x in re.split(r"[\r\n]", capsys.readouterr().err) if "entity" in x]
    shown = [(int(m.group(1)), _seconds(m.group(2))) for x in lines
             if (m := re.search(r"\| *(\d+)/\d+ \[[\d:]+<([\d:]+),", x))]
    first = next((eta for done, eta in shown if 0 < done < n), None)
    assert first is not None, lines
    # the remaining 40 entities take 5 batches, about 1.25 s; counting the 4 s load in the rate would say ~25 s
    assert first <= 3, (first, lines)
    assert all(done % batch == 0 for done, _ in shown), shown                  # refreshed only on whole batches


class Trickle(SlowStart):
    """A batch's results arrive one by one, after tqdm's monitor thread has forced a refresh mid-batch (what it does
    to a bar silent for ``maxinterval``, 10 s, as a slow first batch is: ``miniters = 1`` and a refresh)."""

    def stream(self, prompts, retry=False):
        from tqdm import tqdm

        self._load()
        for lo in range(0, len(prompts), self.batch):
            time.sleep(self.batch_s)
            if lo == 0:
                for bar in list(tqdm._instances):                             # TMonitor.run, deterministically
                    if bar.miniters > 1:
                        bar.miniters = 1
                        bar.refresh()
            for j in range(lo, min(lo + self.batch, len(prompts))):
                time.sleep(0.01)
                yield j, Generation(f"A calm, factual description number {j} of a thing people like.", 12)


def test_no_eta_from_part_of_the_first_batch_even_after_the_monitor_forces_a_refresh(monkeypatch, capsys):
    # a new user saw `1/2000 [00:17<9:49:38]` on describe's first line: one entity of the first batch set the rate
    monkeypatch.setattr(describe, "PROGRESS_EVERY_S", 0.0)
    n, batch = 24, 8
    todo = [SimpleNamespace(messages=[{"role": "user", "content": str(i)}]) for i in range(n)]
    describe.generate(Trickle(load_s=0.0, batch=batch, batch_s=0.2), todo, [str(i) for i in range(n)], Cache(),
                      flush_every=batch)
    lines = [x for x in re.split(r"[\r\n]", capsys.readouterr().err) if "entity" in x or "ETA" in x]
    early = [x for x in lines if (m := re.search(r"\| *(\d+)/\d+ \[", x)) and int(m.group(1)) < batch]
    assert any(int(re.search(r"\| *(\d+)/", x).group(1)) > 0 for x in early), lines  # mid-batch lines were printed
    assert not [x for x in early if re.search(r"<[\d:]+,", x)], early           # none of them with an ETA
    assert all("ETA after the first batch" in x for x in early), early
    later = [x for x in lines if (m := re.search(r"\| *(\d+)/\d+ \[[\d:]+<([\d:]+),", x)) and int(m.group(1)) >= batch]
    assert later, lines                                                        # the ETA comes once a batch is done
