"""Training: distributed set-up (``distributed``), the generic loop any model plugs into (``loop``) and the
sequential recommenders' side of it (``sequential``)."""
