"""One module per stage of the stage table (``pipelines.graph``), each with ``run(ctx) -> StageResult``.

A stage reads and writes only under ``ctx.home``; only paths travel between stages. No stage imports another
stage or the runner (checked by import-linter in ``make test``): what two stages share lives in a package below
them (``evaluation``, ``training``, ``backends``, ``catalogue``, ``summary``).
"""
