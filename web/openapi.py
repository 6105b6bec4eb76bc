"""Routes declared once with the pydantic models that validate them, and the OpenAPI document made of them.

`endpoint(...)` registers a view on a blueprint, validates its path ids, query and JSON body
with the models given (a 400 names the field at fault), and records all of it, so
/api/v1/openapi.json describes exactly what the code checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError

from shared.identity import Role
from web.auth import requires
from web.errors import HttpError, field_of

PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$"
"""A file path under the storage root as the API documents it (anything else is refused)."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"
"""A worker id or licence pool name."""
HEADER_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 200,
                 "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"}
"""A request header the API reads: printable ASCII, no spaces at its ends."""
MAX_ID = 2**53
"""Ids beyond this are no id any database of the farm hands out: 404 before any call."""

ERROR_STATUSES = {
    "400": "a field is invalid; `field` names it", "401": "no valid login or token",
    "403": "the role or the job's owner does not allow it", "404": "no such object or file",
    "409": "the object's state does not allow it", "413": "the upload is over the limit",
    "502": "a service failed on a bug of its own",
    "503": "the broker or a service did not answer in time",
}


@dataclass
class Route:
    method: str
    path: str
    name: str
    summary: str
    role: Role | None
    query: type[BaseModel] | None
    body: type[BaseModel] | None
    raw_body: str | None  # a media type for a body that is not JSON (an upload)
    returns: dict[str, Any]
    produces: str
    path_ints: list[str] = field(default_factory=list)
    path_strings: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # optional request header -> meaning


ROUTES: list[Route] = []


def endpoint(blueprint: Blueprint, method: str, path: str, summary: str, *,
             role: Role | None = None, query: type[BaseModel] | None = None,
             body: type[BaseModel] | None = None, raw_body: str | None = None,
             returns: dict[str, Any] | None = None,
             produces: str = "application/json",
             headers: dict[str, str] | None = None) -> Callable[[Callable[..., Any]], Any]:
    """Declare a view: `GET /jobs/<int:job_id>` with its models; the view gets `query`/`body`.
    `headers` documents the optional request headers the view reads (name -> meaning)."""

    def decorate(view: Callable[..., Any]) -> Any:
        ints = re.findall(r"<int:(\w+)>", path)
        strings = re.findall(r"<(?:path:)?(\w+)>", path)
        route = Route(method, path, view.__name__, summary, role, query, body, raw_body,
                      returns or {"type": "object"}, produces, ints, strings, dict(headers or {}))
        ROUTES.append(route)

        def handler(**kwargs: Any) -> Any:
            for name in ints:
                if not 1 <= kwargs[name] <= MAX_ID:
                    raise HttpError(404, f"{name}: {kwargs[name]} is no id")
            if query is not None:
                kwargs["query"] = _validate(query, request.args.to_dict(), "query")
            if body is not None:
                data = request.get_json(silent=True)
                if data is None:
                    raise HttpError(400, "body: must be a JSON object", "body")
                kwargs["body"] = _validate(body, data, "body")
            result = view(**kwargs)
            if isinstance(result, Response | tuple):
                return result
            return jsonify(result)

        handler.__name__ = view.__name__
        handler.__doc__ = view.__doc__
        wrapped = requires(role)(handler) if role is not None else handler
        blueprint.add_url_rule(path, endpoint=view.__name__, view_func=wrapped,
                               methods=[method])
        return wrapped

    return decorate


def _validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        path, message = field_of(exc)
        raise HttpError(400, f"{where}.{path}: {message}", f"{where}.{path}") from None


def _openapi_path(path: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)


def document(prefix: str, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared route."""
    components: dict[str, Any] = {"Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "field": {"type": "string"},
                       "service": {"type": "string"}}}}

    def schema_of(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict[str, Any] = {}
    for route in ROUTES:
        parameters: list[dict[str, Any]] = []
        for name in route.path_strings:
            schema: dict[str, Any] = (
                {"type": "integer", "minimum": 1, "maximum": MAX_ID} if name in route.path_ints
                else {"type": "string", "pattern": PATH_PATTERN} if f"<path:{name}>" in route.path
                else {"type": "string", "pattern": NAME_PATTERN})
            parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
        if route.query is not None:
            query_schema = route.query.model_json_schema()
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                parameters.append({"name": name, "in": "query", "required": name in required,
                                   "schema": prop})
        for name, meaning in route.headers.items():
            parameters.append({"name": name, "in": "header", "required": False,
                               "description": meaning, "schema": HEADER_SCHEMA})
        responses: dict[str, Any] = {"200": {"description": "done", "content": {
            media: {"schema": route.returns if media == "application/json"
                    else {"type": "string", "format": "binary"}}
            for media in route.produces.split(",")}}}
        for status, why in ERROR_STATUSES.items():
            responses[status] = {"description": why, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
        operation: dict[str, Any] = {"operationId": route.name, "summary": route.summary,
                                     "parameters": parameters, "responses": responses}
        if route.role is not None or route.method != "GET":
            operation["security"] = [{"bearer": []}, {"session": []}]
            operation["description"] = (f"Needs the role {route.role or Role.ARTIST} or above.")
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema_of(route.body)}}}
        elif route.raw_body is not None:
            operation["requestBody"] = {"required": True, "content": {
                route.raw_body: {"schema": {"type": "string", "format": "binary"}}}}
        paths.setdefault(prefix + _openapi_path(route.path), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "corral_session"}}},
    }
