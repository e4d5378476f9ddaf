"""The BentoML service: settings, resources, workers and wiring. Routes live in `higgs_api`, the model
and the engine in `higgs_runtime`."""

from __future__ import annotations

import logging

import bentoml
from starlette.middleware.cors import CORSMiddleware

from higgs_api.app import GENERATION_PATHS, JSON_PATHS, OPEN_PATHS, create_app, route_paths
from higgs_api.drain import Drain, DrainGate
from higgs_api.middleware import (ApiKeyAuth, ApiKeys, CancelOnDisconnect, ClientErrorLogFilter, ErrorContract,
                                  RequestId, RequestIdLogFilter)
from higgs_api.request_guards import BodyGuard, FramingRule, JsonContentType
from higgs_api.response_timeout import replace_bentoml_timeout
from higgs_api.rest import RestApi
from higgs_api.route_metrics import BENTOML_SYSTEM_PATHS, RouteTemplates, label_bentoml_metrics_by_route
from higgs_api.state import ServerState
from higgs_api.voices import UPLOAD_ROUTE, VoiceApi
from higgs_runtime.config import Settings
from higgs_runtime.native_memory import bound_native_memory
from higgs_runtime.scaling import for_worker, resources, worker_count

# BentoML's logging leaves the root at WARNING: our INFO lines (client errors, model loading) need their own level.
OUR_LOGGERS = ("higgs_audio", "higgs_api", "higgs_runtime")
for name in OUR_LOGGERS:
    logging.getLogger(name).setLevel(logging.INFO)
# A logger's filters apply only to its own records, not its children's: each of our loggers gets one.
for name in list(logging.root.manager.loggerDict):
    if name.partition(".")[0] in OUR_LOGGERS:
        logging.getLogger(name).addFilter(RequestIdLogFilter())
# The logger of BentoML's API error handling (bentoml._internal.server.http_app.log_exception).
logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())

settings = for_worker(Settings.from_env(), bentoml.server_context.worker_index)
bound_native_memory(settings.malloc_trim_interval_s)
WORKERS = worker_count(settings)
drain = Drain(settings.drain_timeout_s)
api_keys = ApiKeys(settings.api_key_set())
http_app = create_app(lambda: HiggsAudio.openapi_spec.asdict())


@bentoml.service(
    name="higgs_audio",
    # No BentoML max_concurrency: the engine's bounded queue answers 429 with a useful detail. The traffic
    # timeout (`ResponseTimeout`: until a response starts) stays above the engine's own request timeout,
    # which reports itself.
    traffic={"timeout": int(settings.request_timeout_s) + 30},
    workers=WORKERS,
    resources=resources(settings, WORKERS),
)
@bentoml.asgi_app(http_app, path="/")
class HiggsAudio(RestApi, VoiceApi):
    def __init__(self) -> None:
        self.state = ServerState(settings, api_keys)

    @bentoml.on_startup
    async def _drain_on_sigterm(self) -> None:
        drain.install()

    def __is_ready__(self) -> bool:
        """/readyz: the model is loaded and the server is not draining."""
        return self.state.loader.status == "ready" and not drain.draining


replace_bentoml_timeout()
label_bentoml_metrics_by_route(RouteTemplates([*route_paths(http_app.routes), *BENTOML_SYSTEM_PATHS,
                                               *(api.route for api in HiggsAudio.apis.values())]))

# Outermost first: request ids on everything; CORS, which answers preflights before any key is asked
# for and marks every answer, errors included; the error shapes, framing, the drain gate, keys, the
# JSON routes' content type, body limits; and innermost the disconnect watch, which cancels the route's
# own work.
HiggsAudio.add_asgi_middleware(RequestId)
if settings.cors_origin_list:
    HiggsAudio.add_asgi_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list,
                                   allow_methods=["GET", "POST", "DELETE"],
                                   allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                                   expose_headers=["X-Request-ID"], max_age=600)
HiggsAudio.add_asgi_middleware(ErrorContract)
HiggsAudio.add_asgi_middleware(FramingRule)
HiggsAudio.add_asgi_middleware(DrainGate, drain=drain, refused_paths=GENERATION_PATHS,
                               untracked_paths=OPEN_PATHS | {"/metrics"})
HiggsAudio.add_asgi_middleware(ApiKeyAuth, keys=api_keys, open_paths=OPEN_PATHS)
HiggsAudio.add_asgi_middleware(JsonContentType, paths=JSON_PATHS)
HiggsAudio.add_asgi_middleware(BodyGuard, max_bytes=settings.max_request_bytes, upload_path=UPLOAD_ROUTE,
                               max_upload_bytes=settings.max_upload_bytes + 64 * 1024, timeout_s=settings.body_timeout_s)
HiggsAudio.add_asgi_middleware(CancelOnDisconnect)
