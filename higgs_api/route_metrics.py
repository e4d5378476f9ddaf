"""BentoML's request metrics, labelled by route template instead of raw path.

BentoML's traffic middleware (the outermost one) labels each request's series with `scope["path"]`,
401s and 404s included: every distinct URL adds series to `/metrics`, to the worker's memory and to
Prometheus' multiprocess files on disk, kept until restart. Unauthenticated clients could grow all
three without bound. Here every path counts under the template of the route that serves it
(`/voices/{name}`), or under `UNMATCHED` when no route does, so the series are bounded by the routes.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

UNMATCHED = "unmatched"
# The routes of BentoML's own server around the service's.
BENTOML_SYSTEM_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/schema.json")
_ORIGINAL_SCOPE = "higgs.original_scope"


class RouteTemplates:
    """Maps a request path to the template of the route that serves it."""

    def __init__(self, templates: Iterable[str]):
        unique = sorted(set(templates))
        self._exact = frozenset(t for t in unique if "{" not in t)
        self._patterns = [(compile_path(t)[0], t) for t in unique if "{" in t]

    def of(self, path: str) -> str:
        if path in self._exact:
            return path
        return next((template for pattern, template in self._patterns if pattern.match(path)), UNMATCHED)


def label_bentoml_metrics_by_route(templates: RouteTemplates) -> None:
    """Makes BentoML's traffic metrics middleware see route templates. BentoML 1.4 imports the class
    from its module when it builds the worker's app, after the service module (which calls this) is
    imported; the class is pinned with BentoML's version."""
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "labels_route_templates", False):
        return

    class RouteLabelledTrafficMetrics(base):
        labels_route_templates = True

        def __init__(self, app: ASGIApp, **options):
            super().__init__(_RestoreScope(app), **options)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] not in ("http", "websocket"):
                return await super().__call__(scope, receive, send)
            labelled = {**scope, "path": templates.of(scope["path"]), _ORIGINAL_SCOPE: scope}
            await super().__call__(labelled, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledTrafficMetrics


class _RestoreScope:
    """Below the metrics middleware, the app sees the request's own scope again."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope.get(_ORIGINAL_SCOPE, scope), receive, send)
