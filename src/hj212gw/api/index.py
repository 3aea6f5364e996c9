"""GET / (a redirect to the index) and GET /api/v1: the routes this server answers, for a person
who opens the admin port in a browser. Built from the router at request time, so it never drifts."""

from __future__ import annotations

from aiohttp import web

from hj212gw.api.responses import json_response

INDEX_ROUTE = "/api/v1"
DOCS = "docs/api.md"


class IndexRoutes:
    """The index of routes and the redirect to it from `/`."""

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.root)
        router.add_get(INDEX_ROUTE, self.index)

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(INDEX_ROUTE)

    async def index(self, request: web.Request) -> web.Response:
        paths = {resource.canonical for resource in request.app.router.resources()}
        routes = sorted(path for path in paths if path != "/")
        return json_response({"service": "hj212gw", "routes": routes, "docs": DOCS})
