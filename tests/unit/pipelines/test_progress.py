"""pipelines.progress: the one progress bar; no rate or ETA before the first whole batch, then the mean rate."""
from __future__ import annotations

import io
import re

from pipelines.progress import PENDING, Progress


def _bar(total: int, first: int) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    return Progress(total=total, desc="work", unit="user", first=first, file=out, mininterval=0, miniters=1,
                    dynamic_ncols=False, smoothing=0), out


def test_no_eta_until_the_first_whole_batch_then_the_first_batchs_rate():
    bar, out = _bar(total=640, first=64)
    bar.start_t -= 10.0                                                        # the first batch took 10 s
    bar.update(1)                                                              # part of it (a streamed result)
    bar.refresh()
    assert PENDING in bar.__str__() and not re.search(r"<[\d:]+", bar.__str__()), bar.__str__()
    bar.update(63)                                                             # the whole first batch
    text = bar.__str__()
    assert PENDING not in text
    eta = re.search(r"<(\d+):(\d+),", text)                                    # 576 users at 6.4/s: 90 s
    assert eta and 60 * int(eta.group(1)) + int(eta.group(2)) == 90, text
    bar.close()
    assert "ETA" in out.getvalue()


def test_first_is_capped_by_the_total_and_unknown_totals_never_show_an_eta():
    bar, _ = _bar(total=5, first=64)                                           # a retry smaller than one batch
    bar.update(5)
    assert PENDING not in bar.__str__()
    bar.close()
    bar, _ = _bar(total=None, first=1)
    bar.update(3)
    assert PENDING not in bar.__str__() and "<" not in bar.__str__()
    bar.close()
