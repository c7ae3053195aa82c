"""Pieces every lens-backed response echoes."""

from __future__ import annotations

from app.api.schemas import PrivacyOut, WindowOut
from app.engine.lens import ALL, Lens


def lens_out(lens: Lens) -> WindowOut:
    """The lens parameters a response was computed with."""
    assert lens.snapshot is not None
    assert lens.since is not None
    assert lens.until is not None
    grid = lens.grid_window()
    return WindowOut(
        city=lens.city,
        level=lens.level,
        since=lens.since,
        until=lens.until,
        category=None if lens.category == ALL else lens.category,
        snapshot_id=lens.snapshot.id,
        grid_since=grid[0] if grid else None,
        grid_until=grid[1] if grid else None,
        time_bin=lens.effective_bin(),
        grain=lens.grain_of(),
        published_until=lens.published_until(),
        timezone=lens.tz,
    )


def privacy_out(lens: Lens) -> PrivacyOut:
    """The release rule applied."""
    dp = lens.privacy_mode == "dp"
    spent = lens.privacy_spent()[0] if dp else None
    return PrivacyOut(mode=lens.privacy_mode, k=lens.privacy_k, epsilon=lens.epsilon if dp else None, epsilon_spent=spent)
