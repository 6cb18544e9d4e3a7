"""Keyword extraction, the skill inventory and model profiles (Symbolic-MoE)."""
