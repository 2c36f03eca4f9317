"""Scoring: the detector registry, the score role's pipeline and the embed role's scorer."""
