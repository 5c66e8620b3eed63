"""Whether a database error means the store could not be reached (try again later) or that it
refused the work (a bug, or data it will never take).

An outage shows up as many classes: the driver's connection errors, the socket's
(``ConnectionRefusedError`` while PostgreSQL is down), SQLAlchemy's pool timeout, a lost
connection, and PostgreSQL's own SQLSTATEs for a server that is starting, stopping or out of
connection slots, which the asyncpg dialect raises as a plain ``DBAPIError``. Both the record
shipper (retry, never drop) and the HTTP error handler (503 ``store_unavailable``) ask this one
function.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLSTATE classes: 08 connection exception, 53 insufficient resources (too many connections),
# 57P operator intervention (admin or crash shutdown, cannot connect now).
UNREACHABLE_SQLSTATES = ("08", "53", "57P")


def store_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate.startswith(UNREACHABLE_SQLSTATES)
    return False
