"""The admin API under ``/admin/``: read and change routes, load versions, hot-swap checkpoints.

Every call needs ``Authorization: Bearer <admin key>`` (``--admin-key`` or ``SEEKFORGE_ADMIN_KEY``);
without an admin key configured the API answers 403 to everyone, a user API key gets 403 and a
missing or unknown key 401 — all in OpenAI's error shape.

    GET  /admin/routes                          routes with weights, stable, canary, shadow
    PUT  /admin/routes/{name}                   {"weights": {"v1": 90, "v2": 10}}  (creates the route if new)
    POST /admin/routes/{name}/promote           {"version": "v2"}  (default: the canary)
    POST /admin/routes/{name}/rollback          all traffic to the stable version
    GET  /admin/versions                        versions, their sources, requests in flight, draining engines
    POST /admin/versions                        {"name", "model", "adapter"?}  load a new version
    POST /admin/versions/{name}/swap            {"model", "adapter"?}  hot swap (drain old engine, free it)
    DELETE /admin/versions/{name}               unload a version no route sends traffic to (drain, free)
    GET  /admin/events                          the last rollbacks, promotions, loads and swaps
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request

from seekforge.serve import protocol as P
from seekforge.serve.routing import VersionSpec, check_name, parse_weights

router = APIRouter(prefix="/admin", include_in_schema=False)


def check_admin(request: Request) -> Any:
    """The ServeOps of the app, once the request carries the admin key."""
    state = request.app.state.server
    admin_key = state.ops.options.admin_key
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not admin_key:
        raise P.APIError(403, "The admin API is disabled: start the server with --admin-key.",
                         type="permission_error", code="admin_disabled")
    if not key:
        raise P.APIError(401, "Missing admin key: send 'Authorization: Bearer <admin key>'.",
                         code="invalid_api_key")
    if secrets.compare_digest(key, admin_key):
        return state.ops
    if any(secrets.compare_digest(key, k) for k in state.options.api_keys):
        raise P.APIError(403, "This endpoint needs the admin key; a user API key cannot call /admin/.",
                         type="permission_error", code="admin_key_required")
    raise P.APIError(401, "Incorrect admin key provided.", code="invalid_api_key")


async def _body(request: Request) -> dict[str, Any]:
    from seekforge.serve.app import read_json

    return await read_json(request)


def _route(ops: Any, name: str) -> Any:
    if name not in ops.routes:
        raise P.APIError(404, f"no route '{name}'; routes: {', '.join(ops.routes) or '(none)'}",
                         type="not_found_error", param="name", code="route_not_found")
    return ops.routes[name]


def _spec(name: str, body: dict[str, Any]) -> VersionSpec:
    model, adapter = body.get("model"), body.get("adapter")
    if not isinstance(model, str) or not model:
        raise P.bad("model", "'model' must be the path of a model directory on the server",
                    code="invalid_type")
    if adapter is not None and not isinstance(adapter, str):
        raise P.bad("adapter", "'adapter' must be the path of an adapter directory", code="invalid_type")
    try:
        spec = VersionSpec(check_name(name, "version"), model, adapter)
        spec.check_paths()
    except (ValueError, FileNotFoundError) as e:
        raise P.bad("model", str(e)) from None
    return spec


@router.get("/routes")
async def get_routes(request: Request) -> dict[str, Any]:
    ops = check_admin(request)
    return {"object": "list", "data": [r.to_dict() for r in ops.routes.values()]}


@router.put("/routes/{name}")
async def put_route(name: str, request: Request) -> dict[str, Any]:
    ops = check_admin(request)
    body = await _body(request)
    weights = body.get("weights")
    if isinstance(weights, str):
        try:
            weights = parse_weights(weights, "weights")
        except ValueError as e:
            raise P.bad("weights", str(e)) from None
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in weights.items()) or sum(weights.values()) <= 0:
        raise P.bad("weights", "'weights' must map version names to numbers >= 0 with a positive sum",
                    code="invalid_type")
    try:
        check_name(name, "route")
        return ops.set_weights(name, {k: float(v) for k, v in weights.items()}).to_dict()
    except ValueError as e:
        raise P.bad("weights", str(e)) from None


@router.post("/routes/{name}/promote")
async def promote(name: str, request: Request) -> dict[str, Any]:
    ops = check_admin(request)
    _route(ops, name)
    body = await _body(request) if await request.body() else {}
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise P.bad("version", "'version' must be a version name", code="invalid_type")
    try:
        return ops.promote(name, version).to_dict()
    except ValueError as e:
        raise P.bad("version", str(e)) from None


@router.post("/routes/{name}/rollback")
async def rollback(name: str, request: Request) -> dict[str, Any]:
    ops = check_admin(request)
    _route(ops, name)
    return ops.rollback(name, reason="admin").to_dict()


def _version_info(name: str, served: Any) -> dict[str, Any]:
    spec = served.spec
    return {"name": name, "source": spec.describe() if spec else None, "inflight": served.inflight,
            "running": served.engine.num_running(), "waiting": served.engine.num_waiting(),
            "max_model_len": served.engine.max_len}


@router.get("/versions")
async def get_versions(request: Request) -> dict[str, Any]:
    ops = check_admin(request)
    models = dict(ops.state.models)
    return {"object": "list", "data": [_version_info(n, m) for n, m in models.items()],
            "draining": [_version_info(m.name, m) for m in list(ops.draining)]}


@router.post("/versions")
async def load_version(request: Request) -> dict[str, Any]:
    ops = check_admin(request)
    body = await _body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise P.bad("name", "'name' must be the new version's name", code="invalid_type")
    if name in ops.state.models or name in ops.routes:
        raise P.APIError(409, f"'{name}' already exists; use /admin/versions/{name}/swap to replace it",
                         param="name", code="already_exists")
    try:
        served = await ops.load_version(_spec(name, body))
    except Exception as e:  # noqa: BLE001 — whatever a bad directory raises is the caller's 400
        if isinstance(e, P.APIError):
            raise
        raise P.bad("model", f"could not load '{name}': {e}") from None
    return _version_info(name, served)


@router.post("/versions/{name}/swap")
async def swap_version(name: str, request: Request) -> dict[str, Any]:
    ops = check_admin(request)
    if name not in ops.state.models:
        raise P.APIError(404, f"no version '{name}'; versions: {', '.join(ops.state.models)}",
                         type="not_found_error", param="name", code="model_not_found")
    body = await _body(request)
    try:
        served = await ops.swap_version(_spec(name, body))
    except Exception as e:  # noqa: BLE001 — whatever a bad directory raises is the caller's 400
        if isinstance(e, P.APIError):
            raise
        raise P.bad("model", f"could not load '{name}': {e}") from None
    return {**_version_info(name, served), "draining": len(ops.draining)}


@router.delete("/versions/{name}")
async def delete_version(name: str, request: Request) -> dict[str, Any]:
    """Unload a version: 409 while a route, canary, shadow or the default still uses it, or when it
    is the last one; else it leaves the registry at once and its engine is freed once drained."""
    ops = check_admin(request)
    try:
        old = await ops.unload_version(name)
    except KeyError:
        raise P.APIError(404, f"no version '{name}'; versions: {', '.join(ops.state.models)}",
                         type="not_found_error", param="name", code="model_not_found") from None
    except ValueError as e:
        raise P.APIError(409, str(e), param="name", code="version_in_use") from None
    # OpenAI's shape for a deleted model, plus the requests the engine still finishes before it is freed
    return {"id": name, "object": "model", "deleted": True, "draining": old.inflight}


@router.get("/events")
async def get_events(request: Request) -> dict[str, Any]:
    ops = check_admin(request)
    return {"object": "list", "data": list(ops.events)}
