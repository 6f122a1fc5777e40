"""Flask + Flask-SQLAlchemy, with the database login taken from a rotating secret.

The only rotating_pool line is `rotating_pool.attach(db.engine, ...)` in the app
factory: models, sessions and queries are plain Flask-SQLAlchemy.

    DB_SECRET_ID=prod/app/db flask --app examples.flask_app run

Environment: ``DB_SECRET_ID`` (the secret's name or ARN); optionally
``DATABASE_URL`` (default ``postgresql+psycopg://``: host, port and database
from the secret).
"""

from __future__ import annotations

import os

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import rotating_pool


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Note(db.Model):
    __tablename__ = "flask_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def create_app() -> Flask:
    """The application factory (``flask --app examples.flask_app run`` calls it)."""
    app = Flask(__name__)
    # No user or password in the URL: they come from the secret at every new connection.
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "postgresql+psycopg://")
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    db.init_app(app)
    with app.app_context():
        rotating_pool.attach(db.engine, secret_id=os.environ["DB_SECRET_ID"])
        db.create_all()

    @app.post("/notes")
    def add_note() -> tuple[dict[str, object], int]:
        note = Note(body=request.get_json()["body"])
        db.session.add(note)
        db.session.commit()
        return {"id": note.id}, 201

    @app.get("/notes/count")
    def count_notes() -> dict[str, object]:
        return {"count": db.session.scalar(select(func.count()).select_from(Note))}

    return app
