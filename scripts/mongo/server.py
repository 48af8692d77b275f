"""Serve the MongoDB wire protocol with mongoeco's SQLite engine (run by scripts/mongo/start.sh).

Binds ``--host`` (127.0.0.1) on ``--port`` (0: a free port chosen by the OS), writes the port it got to
``--port-file`` once it listens, and serves until SIGTERM/SIGINT. Needs Python >= 3.13 and
``mongoeco[wire]``. With ``--user`` and ``--password-file`` every client must authenticate (SCRAM) as
that user (authSource admin), as on a real deployment. A stand-in for tests, not a MongoDB: its known
gaps are in scripts/mongo/start.sh and docs/cluster.md; three of them are patched below (SCRAM, non-finite
doubles, users with roles).
"""

import argparse
import asyncio
import math
import os
import signal

from mongoeco.core.bson_scalars import BsonDouble
from mongoeco.core.codec import DocumentCodec
from mongoeco.engines import SQLiteEngine
from mongoeco.errors import OperationFailure
from mongoeco.wire import AsyncMongoEcoProxyServer, WireAuthUser
from mongoeco.wire.executor import WireCommandExecutor
from mongoeco.wire.handshake import WireHandshakeService

# mongoeco 4.11 gap: its SCRAM-SHA-1 takes the raw password, not MongoDB's md5("user:mongo:pwd") digest
# that drivers send, and its hello has no saslSupportedMechs, so drivers fall back to SCRAM-SHA-1 and
# fail. Advertise SCRAM-SHA-256 (which it implements correctly) the way MongoDB >= 4.0 does.
_hello = WireHandshakeService.build_hello_response


def _hello_with_mechs(self, *, command_name, body, connection):
    response = _hello(self, command_name=command_name, body=body, connection=connection)
    if body.get("saslSupportedMechs"):
        response["saslSupportedMechs"] = ["SCRAM-SHA-256"]
    return response


WireHandshakeService.build_hello_response = _hello_with_mechs

# mongoeco 4.11 gap: it keeps documents as SQLite JSON, which has no NaN/Infinity, and answers "malformed
# JSON" to a document holding one (MongoDB stores them). Store non-finite doubles as its own tagged
# "double" value, which it decodes with float(): they come back as NaN/inf (queries on them aside).
_encode = DocumentCodec.encode


def _encode_nonfinite(data):
    value = data.value if isinstance(data, BsonDouble) else data
    if type(value) is float and not math.isfinite(value):
        return DocumentCodec._tagged_value("double", repr(value))
    return _encode(data)


DocumentCodec.encode = staticmethod(_encode_nonfinite)

# mongoeco 4.11 gap: it keeps each user's roles but checks none, and has no createUser. Add createUser and
# dropUser (SCRAM-SHA-256 users, in memory: gone when the server stops), and refuse, as MongoDB does
# (Unauthorized, code 13), every write of a user whose roles are all read roles (MongoDB's `read` user of
# analysts; a user without roles, as --user, may do everything).
_READ_ROLES = {"read", "readAnyDatabase"}
_WRITES = {"insert", "update", "delete", "findandmodify", "createindexes", "dropindexes", "drop", "dropdatabase",
           "create", "collmod", "renamecollection", "bulkwrite", "createuser", "dropuser"}
_build_context, _execute = WireCommandExecutor._build_request_context, WireCommandExecutor.execute_prepared


def _refuse_readers(connection, command: str, db: str) -> None:
    roles = connection.authenticated_roles
    if command.lower() in _WRITES and roles and all(r.get("role") in _READ_ROLES for r in roles):
        raise OperationFailure(f"not authorized on {db} to execute command {{ {command}: ... }}", code=13,
                               details={"codeName": "Unauthorized"})


def _build_with_users(self, body, *, connection, db_name=None, on_normalized=None):
    command, db = next(iter(body), ""), db_name or body.get("$db") or "admin"
    if command in ("createUser", "dropUser"):
        _refuse_readers(connection, command, db)
        name, users = body[command], self._auth._users
        users = tuple(u for u in users if (u.username, u.source) != (name, db))
        if command == "createUser":
            roles = tuple(r if isinstance(r, dict) else {"role": r, "db": db} for r in body.get("roles", ()))
            users += (WireAuthUser(name, body["pwd"], source=db, mechanisms=("SCRAM-SHA-256",), roles=roles),)
        self._auth._users = users
        body = {"ping": 1, "$db": db}
    return _build_context(self, body, connection=connection, db_name=db_name, on_normalized=on_normalized)


async def _execute_with_roles(self, context):
    _refuse_readers(context.connection, context.command_name, context.db_name)
    return await _execute(self, context)


WireCommandExecutor._build_request_context = _build_with_users
WireCommandExecutor.execute_prepared = _execute_with_roles


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--db", required=True, help="SQLite file of the data")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--user", help="require authentication as this user")
    ap.add_argument("--password-file", help="the user's password (never on the command line)")
    args = ap.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    users = ()
    if args.user:
        with open(args.password_file) as fh:
            users = (WireAuthUser(args.user, fh.read().strip(), source="admin", mechanisms=("SCRAM-SHA-256",)),)
    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(args.db), host=args.host, port=args.port,
                                      auth_users=users)
    address = await server.start()
    tmp = f"{args.port_file}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{address.port}\n")
    os.replace(tmp, args.port_file)  # atomic: start.sh never reads half a port
    print(f"mongoeco serving on {address.host}:{address.port} (sqlite {args.db}, pid {os.getpid()}, "
          f"{'auth as ' + args.user if users else 'no auth'})", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
        print("mongoeco stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
