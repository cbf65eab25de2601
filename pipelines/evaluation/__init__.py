"""Evaluation: the protocol (``protocol``), the day's evaluation data and stored negatives (``data``), the models
it scores (``scorers``) and the report a reviewer reads (``report``)."""
