"""Prediction with missing modalities, all-subset evaluation, metrics and reports."""
