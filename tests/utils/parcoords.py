"""Browser helper for the Results page's parallel coordinates (a custom component's iframe)."""

from __future__ import annotations

from typing import Any


def brush(page: Any, axis_label: str, start: float, end: float) -> None:
    """Drags with the mouse along the parcoords axis ``axis_label``, from ``start`` to ``end``
    (fractions of the axis' height from its top), inside the component's iframe."""
    page.locator(".st-key-results-parcoords iframe").scroll_into_view_if_needed()
    page.wait_for_timeout(300)  # the component redraws once it is in view
    frame = page.frame_locator(".st-key-results-parcoords iframe")
    axis = frame.locator("g.y-axis").filter(
        has=frame.locator("text.axis-title", has_text=axis_label)
    )
    area = axis.locator("g.axis-brush rect.background").first
    area.wait_for(state="attached")
    box = area.bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + start * box["height"])
    page.mouse.down()
    for step in range(1, 11):
        y = box["y"] + (start + (end - start) * step / 10) * box["height"]
        page.mouse.move(x, y)
    page.mouse.up()
