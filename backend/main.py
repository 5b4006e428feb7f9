"""The FastAPI application (`contract.vocab.API_PREFIX`) and `serve`, which ``pft api`` runs.

`create_app` resolves the two tokens (users', workers'; generated into the data folder on
first start) and, at startup (lifespan), migrates the database and starts the reconciler
thread. No torch on this import path: the preview and validation use the torch-free
registries in `pft`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from backend.api.auth_gate import TokenGate
from backend.api.errors import BodySizeLimit, DatabaseLostGuard, install_error_handlers
from backend.api.main import api_router
from backend.core.config import ApiSettings, get_settings
from backend.core.security import api_token, worker_token
from backend.db.file_guard import DatabaseFileGuard
from backend.db.session import get_engine, make_sessionmaker, migrate
from backend.reconciler import Reconciler
from contract.vocab import API_PREFIX, WORKER_ROUTES

log = logging.getLogger("backend")
DOCS_STATIC = "/docs/static"  # below API_PREFIX: the bundled Swagger UI / ReDoc assets


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(settings.db_url)
        app.state.database_file.arm()  # the file the API's connections now hold
        reconciler = None
        if settings.reconcile_interval_s > 0:
            reconciler = Reconciler(app.state.sessions, settings, app.state.database_file)
            reconciler.start()
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.stop()

    # Swagger UI and ReDoc from the assets bundled in `fastapi-offline` (no CDN: the docs
    # render with the network off), served below the prefix like everything else.
    app = FastAPIOffline(
        title="pft-lab API",
        summary="Partial fine-tuning of vision transformers: jobs, results, angles and soups",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=f"{API_PREFIX}/redoc",
        swagger_ui_oauth2_redirect_url=f"{API_PREFIX}/docs/oauth2-redirect",
        static_url=f"{API_PREFIX}{DOCS_STATIC}",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.token = api_token(settings)
    app.state.worker_token = worker_token(settings)
    if app.state.token == app.state.worker_token:
        raise RuntimeError("PFT_WORKER_TOKEN must differ from PFT_API_TOKEN")
    app.state.sessions = make_sessionmaker(get_engine(settings.db_url))
    app.state.database_file = DatabaseFileGuard(settings.db_url)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(DatabaseLostGuard, guard=app.state.database_file)
    # Added last, so it runs first: no body is read for a request without the token.
    app.add_middleware(
        TokenGate,
        prefix=API_PREFIX,
        worker_prefix=WORKER_ROUTES,
        public=("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"),
        public_prefixes=(f"{DOCS_STATIC}/",),
        token=lambda: app.state.token,
        worker_token=lambda: app.state.worker_token,
    )
    app.include_router(api_router, prefix=API_PREFIX)
    return app


def serve(host: str | None = None, port: int | None = None) -> None:
    """Runs the API with uvicorn (``pft api``); defaults: ``PFT_API_HOST``, ``PFT_API_PORT``."""
    import uvicorn

    from backend.api.timeouts import request_timeout_protocol

    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    private_data_folder(settings)
    app = create_app(settings)
    layout = settings.layout
    log.info("API token: %s", "from PFT_API_TOKEN" if settings.api_token else layout.api_token)
    log.info(
        "worker token: %s",
        "from PFT_WORKER_TOKEN" if settings.worker_token else layout.worker_token,
    )
    uvicorn.run(
        app,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
        access_log=settings.api_access_log,
        # Slow clients are timed out: idle keep-alive connections, and connections that do not
        # deliver a whole request in time (`backend.api.timeouts`); connections are bounded.
        http=request_timeout_protocol(settings.request_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
    )


def private_data_folder(settings: ApiSettings) -> None:
    """The data folder is private to its user: umask 077 for what this process creates (the
    database, its WAL, tokens, artifacts), the folder itself 0700 (tightened if it is ours)."""
    os.umask(0o077)
    root = settings.layout.root
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = root.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        root.chmod(0o700)
