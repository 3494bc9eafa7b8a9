"""acme.vision 2.0.0, shipped by the distribution acme-vision."""

from __future__ import annotations

from nodehost import Context, Package

package = Package("acme.vision", "2.0.0")


@package.node("acme.vision.detect")
async def detect(ctx: Context, params: dict) -> dict:
    """Find boxes (the new model)."""
    return {"model": "v2"}
