"""What a stage is given (``StageContext``) and what it gives back (``StageResult``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import Config


def resolve_home(home: str | Path | None) -> Path:
    """``RECPIPE_HOME``: the given path, else ``$RECPIPE_HOME``, else ``./.recpipe`` (absolute)."""
    return Path(home or os.environ.get("RECPIPE_HOME") or ".recpipe").resolve()


LOCAL_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss16m"


def spark_args(cfg: Config) -> tuple[str, dict]:
    """``(master, conf)`` for the Spark jobs of ``jobs/``: the ``spark`` section (``spark.conf`` wins)."""
    local = cfg.spark.master.startswith("local")
    auto = LOCAL_JAVA_OPTIONS if local else ""
    java = auto if cfg.spark.java_options == "auto" else cfg.spark.java_options
    roles = ("driver", "executor") if local else ("driver",)
    conf = {"spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
            "spark.driver.memory": cfg.spark.driver_memory,
            **{f"spark.{r}.extraJavaOptions": java for r in roles if java}, **cfg.spark.conf}
    return cfg.spark.master, conf


@dataclass(frozen=True)
class StageContext:
    """One stage run: the resolved config, the logical date and ``RECPIPE_HOME``."""

    cfg: Config
    ds: str
    home: Path

    @property
    def run_dir(self) -> Path:
        """``<home>/runs/<ds>``: the day's records, reports and model outputs."""
        return self.home / "runs" / self.ds

    def model_dir(self, stage: str, model: str) -> Path:
        """``runs/<ds>/<stage>/<model>``: what a training stage writes for one model (``vectors.npz``, ...)."""
        return self.run_dir / stage / model

    def spark_args(self) -> tuple[str, dict]:
        """``(master, conf)`` for the Spark jobs of ``jobs/``."""
        return spark_args(self.cfg)


@dataclass
class StageResult:
    """What a stage reports: rows written, table counts, the paths it wrote and stage-specific details.

    Only paths travel between stages (``outputs``, small and XCom-safe); ``details`` land in the stage's record
    and in ``summary.json`` (``stages.<name>``), ``tables`` in ``summary.json``'s ``tables``.
    """

    rows_out: int | None
    outputs: dict[str, str] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON record of ``runs/<ds>/stages/<name>.json`` (without status and seconds)."""
        return {"rows_out": self.rows_out, **self.details, "tables": self.tables, "outputs": self.outputs}
