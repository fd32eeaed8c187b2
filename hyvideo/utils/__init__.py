"""Helpers kept for compatibility with scripts written for the official package."""
