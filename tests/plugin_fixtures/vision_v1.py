"""acme.vision 1.0.0, shipped by the distribution acme-vision-legacy."""

from __future__ import annotations

from nodehost import Context, Package

package = Package("acme.vision", "1.0.0")


@package.node("acme.vision.detect")
async def detect(ctx: Context, params: dict) -> dict:
    """Find boxes (the old model)."""
    return {"model": "v1"}
