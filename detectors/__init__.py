"""Detectors: one module per detector, a small shared interface in ``detectors.base``."""
