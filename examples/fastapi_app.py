"""FastAPI + `rotating_pool.create_async_engine` + an `AsyncSession` dependency.

The engine is made at start-up (the lifespan) and logs in with the secret's
current credentials; handlers use plain SQLAlchemy asyncio sessions.

    DB_SECRET_ID=prod/app/db uvicorn --factory examples.fastapi_app:create_app

Environment: ``DB_SECRET_ID`` (the secret's name or ARN); optionally
``DATABASE_URL`` (default ``postgresql+psycopg_async://``: host, port and
database from the secret).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import rotating_pool


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "fastapi_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class NoteIn(BaseModel):
    body: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = rotating_pool.create_async_engine(
        os.environ.get("DATABASE_URL", "postgresql+psycopg_async://"),
        secret_id=os.environ["DB_SECRET_ID"],
        pool_pre_ping=True,
    )
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    app.state.engine = engine
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    yield
    await engine.dispose()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]


def create_app() -> FastAPI:
    """The application (``uvicorn --factory examples.fastapi_app:create_app``)."""
    app = FastAPI(lifespan=lifespan)

    @app.post("/notes", status_code=201)
    async def add_note(note: NoteIn, session: Session) -> dict[str, int]:
        row = Note(body=note.body)
        session.add(row)
        await session.commit()
        return {"id": row.id}

    @app.get("/notes/count")
    async def count_notes(session: Session) -> dict[str, int]:
        count = await session.scalar(select(func.count()).select_from(Note))
        return {"count": count or 0}

    return app
