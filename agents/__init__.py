"""Experts, aggregators and the free-agent monitor."""
