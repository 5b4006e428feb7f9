"""The FastAPI application (``/api/v1``) and `serve`, which ``pft api`` runs.

`create_app` migrates the database, resolves the API token and starts the reconciler thread at
startup (lifespan). No torch on this import path: the preview and validation use the torch-free
catalogues in `pft`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from backend.api.auth_gate import TokenGate
from backend.api.errors import BodySizeLimit, install_error_handlers
from backend.api.main import api_router
from backend.core.config import Settings, get_settings
from backend.core.security import resolve_token
from backend.db.session import get_engine, make_sessionmaker, migrate
from backend.reconciler import Reconciler

API_PREFIX = "/api/v1"
log = logging.getLogger("backend")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(settings.db_url)
        reconciler = None
        if settings.reconcile_interval_s > 0:
            reconciler = Reconciler(app.state.sessions, settings)
            reconciler.start()
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.stop()

    app = FastAPI(
        title="pft-lab API",
        summary="Partial fine-tuning of vision transformers: jobs, results, angles and soups",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.token = resolve_token(settings)
    app.state.sessions = make_sessionmaker(get_engine(settings.db_url))
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Added last, so it runs first: no body is read for a request without the token.
    app.add_middleware(
        TokenGate,
        prefix=API_PREFIX,
        public=("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"),
        token=lambda: app.state.token,
    )
    app.include_router(api_router, prefix=API_PREFIX)
    return app


def serve(host: str = "127.0.0.1", port: int | None = None) -> None:
    """Runs the API with uvicorn (``pft api``); ``port`` defaults to ``PFT_API_PORT``."""
    import uvicorn

    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    log.info("API token: %s", "from PFT_API_TOKEN" if settings.api_token else settings.token_path)
    uvicorn.run(
        app,
        host=host,
        port=port or settings.api_port,
        log_level="info",
        access_log=settings.api_access_log,
    )
