"""Plain SQLAlchemy ORM code: only the engine line differs from a static-password app.

    DB_SECRET_ID=prod/app/db python -m examples.orm_sessionmaker

Environment: ``DB_SECRET_ID`` (the secret's name or ARN); optionally
``DATABASE_URL`` (default ``postgresql+psycopg://``: host, port and database
from the secret).
"""

from __future__ import annotations

import os

from sqlalchemy import func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import rotating_pool


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "orm_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


# The one changed line; it was:
#   engine = create_engine("postgresql+psycopg://app:PASSWORD@db.example.com/app")
engine = rotating_pool.create_engine(
    os.environ.get("DATABASE_URL", "postgresql+psycopg://"), secret_id=os.environ["DB_SECRET_ID"]
)
Session = sessionmaker(engine)


def add_note(body: str) -> int:
    """Store a note; returns its id."""
    with Session.begin() as session:
        note = Note(body=body)
        session.add(note)
        session.flush()
        return note.id


def count_notes() -> int:
    """How many notes there are."""
    with Session() as session:
        return session.scalar(select(func.count()).select_from(Note)) or 0


def main() -> None:
    Base.metadata.create_all(engine)
    add_note("hello")
    print(f"{count_notes()} note(s)")


if __name__ == "__main__":
    main()
