"""The HTTP side of the server: routes grouped by API surface, wire schemas, input checks, middleware
and response streaming, over the runtime (`higgs_runtime`), which knows nothing of HTTP.

- `rest`: the original REST API (`/health`, `/generate*`); `voices`: voice listing and management
  (`/voices*`, `/upload-voice`); `openai`: the OpenAI-compatible API (`/v1/...`); `playground` and
  `api_docs`: the web pages;
- `state`: one worker's runtime objects as the routes see them; `plans`: validated fields into the
  runtime's speech plans; `schemas`, `inputs`, `upload_form`: what clients send; `streams`: what we
  stream back; `errors`, `middleware`, `drain`: the HTTP contract on every route.
"""
