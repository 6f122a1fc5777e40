"""Orders: a small JSON API on PostgreSQL whose credentials rotate under it.

Deployed on ECS Fargate beside the AWS Secrets Manager Agent (see
task-definition.json). The database login comes from the secret named by
``DB_SECRET_ID``, read through the agent on localhost:2773, never from the
environment or the image. When the secret rotates, rotating_pool notices at the
next refused login, asks the agent for a fresh value (``refreshNow=true``, and
AWSPENDING during a single-user rotation) and logs in again: no request fails.

Endpoints::

    POST /orders         {"item": "tea", "quantity": 2}  -> 201 the order, with its id
    GET  /orders/<id>                                    -> 200 the order, or 404
    GET  /health         liveness: the process answers (no database call)
    GET  /ready          readiness: a query runs on the database

Environment:

=============================  ==========================  =======================================
variable                       default                     meaning
=============================  ==========================  =======================================
``DB_SECRET_ID``               (required)                  the secret's name or ARN
``DATABASE_URL``               ``postgresql+psycopg://``   driver and any override of the secret's
                                                           host/port/dbname (e.g. an RDS Proxy)
``DB_POOL_SIZE``               ``5``                       connections kept per process
``DB_POOL_RECYCLE``            ``1800``                    seconds before a connection is replaced
``DB_RETIRE_AFTER``            (unset: off)                ``retire_after``: seconds from a rotation
                                                           to the last superseded connection closed
``AWS_TOKEN``                  (required)                  the agent's token, or ``file:///path``
``ROTATING_POOL_AGENT_ENDPOINT``  ``http://localhost:2773``  where the agent listens
``LOG_LEVEL``                  ``INFO``                    the app's and rotating_pool's log level
=============================  ==========================  =======================================

Served by gunicorn with ``--preload`` (gunicorn.conf.py): this module, and so the
engine, is imported once in the master process and inherited by each worker.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import sqlalchemy
from flask import Flask, Response, jsonify, request
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

import rotating_pool

logging.basicConfig(
    level=os.environ.get("LOG_LEVEL", "INFO").upper(),
    format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
)
logger = logging.getLogger("orders")

MAX_ITEM_LENGTH = 200
MAX_QUANTITY = 1000

# -- the database -------------------------------------------------------------

SECRET_ID = os.environ["DB_SECRET_ID"]

# Created at import, before gunicorn forks its workers (--preload). After the
# fork rotating_pool drops, in each worker, the pool it inherited (without
# closing the master's connections), so no two processes share a connection.
engine = rotating_pool.create_engine(
    os.environ.get("DATABASE_URL", "postgresql+psycopg://"),
    secret_id=SECRET_ID,
    # Through the Secrets Manager Agent sidecar: this process needs no IAM
    # permission and makes no AWS call; the token comes from AWS_TOKEN.
    source="agent",
    pool_size=int(os.environ.get("DB_POOL_SIZE", "5")),
    max_overflow=int(os.environ.get("DB_MAX_OVERFLOW", "5")),
    # Replaced connections log in again with whatever the secret holds now;
    # connections kept across rotations go on working (PostgreSQL does not end
    # open sessions when a password changes).
    pool_recycle=float(os.environ.get("DB_POOL_RECYCLE", "1800")),
    # Close connections on superseded credentials this long after a rotation.
    retire_after=float(os.environ["DB_RETIRE_AFTER"])
    if os.environ.get("DB_RETIRE_AFTER")
    else None,
    # A connection the server dropped (failover, restart) is replaced before use.
    pool_pre_ping=True,
    connect_args={"connect_timeout": 5, "application_name": "orders"},
)

metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("item", Text, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def create_schema() -> None:
    """Create the table if missing. Safe when several tasks start at once."""
    with engine.begin() as conn:
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's
        # catalog; a transaction-scoped advisory lock serialises the tasks.
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(hashtext('orders-schema'))"))
        metadata.create_all(conn)


if os.environ.get("CREATE_SCHEMA", "1") != "0":
    create_schema()

# -- the HTTP API ---------------------------------------------------------------

app = Flask(__name__)


def _order(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "item": row.item,
        "quantity": row.quantity,
        "created_at": row.created_at.isoformat(),
    }


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


@app.post("/orders")
def create_order() -> tuple[Response, int] | Response:
    """Store one order; answer 201 with it once the transaction has committed."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    item, quantity = body.get("item"), body.get("quantity")
    if not isinstance(item, str) or not item.strip() or len(item) > MAX_ITEM_LENGTH:
        return _error(400, f"item must be a non-empty string of at most {MAX_ITEM_LENGTH} chars")
    # bool is an int in Python; true is not a quantity.
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        return _error(400, "quantity must be an integer")
    if not 1 <= quantity <= MAX_QUANTITY:
        return _error(400, f"quantity must be between 1 and {MAX_QUANTITY}")
    with engine.begin() as conn:
        row = conn.execute(
            orders.insert().values(item=item.strip(), quantity=quantity).returning(*orders.c)
        ).one()
    response = jsonify(_order(row))
    response.headers["Location"] = f"/orders/{row.id}"
    return response, 201


@app.get("/orders/<int:order_id>")
def get_order(order_id: int) -> tuple[Response, int] | Response:
    """One order by id."""
    with engine.connect() as conn:
        row = conn.execute(select(orders).where(orders.c.id == order_id)).one_or_none()
    if row is None:
        return _error(404, f"no order {order_id}")
    return jsonify(_order(row))


@app.get("/health")
def health() -> Response:
    """Liveness, for the container health check: no database call, so that a
    database outage does not make ECS replace every task at once."""
    return jsonify(status="ok")


@app.get("/ready")
def ready() -> tuple[Response, int] | Response:
    """Readiness: the database answers a query with the current credentials."""
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 1"))
    return jsonify(status="ready")


@app.errorhandler(SQLAlchemyError)
@app.errorhandler(rotating_pool.RotatingPoolError)
def database_error(error: Exception) -> tuple[Response, int]:
    """503 without details for the client; the log gets the error (never a
    password: rotating_pool's messages and the driver's carry none)."""
    logger.error("%s %s failed: %s: %s", request.method, request.path, type(error).__name__, error)
    return _error(503, "the database is unavailable; try again")


@app.errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[Response, int]:
    """JSON instead of Flask's HTML error pages (404 on unknown paths, 405, ...)."""
    return _error(error.code or 500, error.description or error.name)
