"""Offline training of the shipped detector heads (never imported by workers)."""
