"""acme.template: a node package for nodehost (rename me).

The host finds `package` through the entry point `template = "nodehost_template:package"`
(group `nodehost.packages`, in pyproject.toml).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from nodehost import Context, NodeError, Package

__all__ = ["GreetParams", "GreetResult", "greet", "package"]

package = Package("acme.template", "0.1.0", description="A template package: one greeting.")


class GreetParams(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Whom to greet, and how often."""

    name: Annotated[str, Meta(min_length=1, description="Who is greeted.")]
    times: Annotated[int, Meta(ge=1, le=10, description="How many greetings.")] = 1
    shout: bool = False


class GreetResult(msgspec.Struct, rename="camel", kw_only=True):
    greetings: list[str]


@package.node("acme.template.greet", timeout=10, idempotent=True)
async def greet(ctx: Context, params: GreetParams) -> GreetResult:
    """Greet someone a number of times."""
    if params.name.lower() == "nobody":
        raise NodeError("E.TEMPLATE.NOBODY", "there is nobody to greet",
                        remediation="set the parameter name to a person's name")
    greetings = []
    for i in range(params.times):
        text = f"hello {params.name}"
        greetings.append(text.upper() if params.shout else text)
        ctx.log(greetings[-1])
        await ctx.progress((i + 1) / params.times, f"greeting {i + 1} of {params.times}")
    return GreetResult(greetings=greetings)
