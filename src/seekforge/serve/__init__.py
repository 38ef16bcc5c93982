"""``seekforge serve``: an OpenAI-compatible HTTP server and a web chat page over the inference engine.

    from seekforge.serve import OpsOptions, ServerOptions, create_app
    app = create_app(Engine.from_pretrained("runs/sft/final"))   # any ASGI server runs it
    app = create_app({"v1": engine1, "v2": engine2},             # several versions, one route
                     ServerOptions(ops=OpsOptions(routes={"chat": {"v1": 90, "v2": 10}})))
"""

from __future__ import annotations

from seekforge.serve.app import ServerOptions, create_app
from seekforge.serve.ops import OpsOptions

__all__ = ["OpsOptions", "ServerOptions", "create_app"]
