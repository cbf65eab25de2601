"""spark-submit entry points. Each has ``main(argv) -> int`` and never imports ``pipelines``."""
