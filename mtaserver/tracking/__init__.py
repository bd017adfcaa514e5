"""Engagement tracking: per-recipient link/pixel rewriting, tokens, the public HTTP app."""
