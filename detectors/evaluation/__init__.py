"""Offline evaluation of the detectors on labelled data (never imported by workers)."""
