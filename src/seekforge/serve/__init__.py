"""``seekforge serve``: an OpenAI-compatible HTTP server and a web chat page over the inference engine.

    from seekforge.serve import create_app
    app = create_app(Engine.from_pretrained("runs/sft/final"))   # any ASGI server runs it
"""

from __future__ import annotations

from seekforge.serve.app import ServerOptions, create_app

__all__ = ["ServerOptions", "create_app"]
