#!/usr/bin/env python3
"""A tiny logging TCP proxy for the PostgreSQL wire protocol (debugging aid).

    python3 wiretap.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [LOGFILE]

Point a driver at 127.0.0.1:LISTEN_PORT and every message it sends (and the
type of every reply) is written one per line to LOGFILE (default: stderr),
e.g.

    c3 F Parse name='_pg3_0' query='SELECT $1::int' params=1
    c3 F Bind portal='' stmt='_pg3_0'
    c3 F Describe P ''
    c3 F Execute portal='' max_rows=0
    c3 F Sync
    c3 B ParseComplete

It only reads the bytes it copies: nothing is changed. Standard library only.
"""
import asyncio
import struct
import sys

FRONTEND = {
    "P": "Parse", "B": "Bind", "D": "Describe", "E": "Execute", "S": "Sync",
    "H": "Flush", "C": "Close", "Q": "Query", "X": "Terminate", "p": "Password",
    "d": "CopyData", "c": "CopyDone", "f": "CopyFail", "F": "FunctionCall",
}
BACKEND = {
    "1": "ParseComplete", "2": "BindComplete", "3": "CloseComplete",
    "C": "CommandComplete", "D": "DataRow", "E": "ErrorResponse",
    "I": "EmptyQueryResponse", "K": "BackendKeyData", "N": "NoticeResponse",
    "R": "Authentication", "S": "ParameterStatus", "T": "RowDescription",
    "Z": "ReadyForQuery", "n": "NoData", "s": "PortalSuspended",
    "t": "ParameterDescription", "A": "NotificationResponse",
    "G": "CopyInResponse", "H": "CopyOutResponse", "W": "CopyBothResponse",
    "d": "CopyData", "c": "CopyDone", "V": "FunctionCallResponse",
    "v": "NegotiateProtocolVersion",
}


def cstr(buf, pos):
    """Read a NUL-terminated string from buf at pos; return (text, next pos)."""
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("utf-8", "replace"), end + 1


def describe_frontend(kind, body):
    """A short human-readable summary of one frontend message."""
    name = FRONTEND.get(kind, repr(kind))
    try:
        if kind == "P":
            stmt, pos = cstr(body, 0)
            query, pos = cstr(body, pos)
            (nparams,) = struct.unpack_from("!H", body, pos)
            q = query if len(query) <= 80 else query[:77] + "..."
            return f"{name} name={stmt!r} query={q!r} params={nparams}"
        if kind == "B":
            portal, pos = cstr(body, 0)
            stmt, pos = cstr(body, pos)
            return f"{name} portal={portal!r} stmt={stmt!r}"
        if kind in ("D", "C"):
            what = chr(body[0])
            obj, _ = cstr(body, 1)
            return f"{name} {what} {obj!r}"
        if kind == "E":
            portal, pos = cstr(body, 0)
            (max_rows,) = struct.unpack_from("!i", body, pos)
            return f"{name} portal={portal!r} max_rows={max_rows}"
        if kind == "Q":
            q = body[:-1].decode("utf-8", "replace")
            q = q if len(q) <= 100 else q[:97] + "..."
            return f"{name} {q!r}"
    except (ValueError, struct.error):
        pass
    return name


def describe_backend(kind, body):
    name = BACKEND.get(kind, repr(kind))
    if kind == "E":
        # Pick out SQLSTATE (C) and message (M) fields.
        fields = {}
        pos = 0
        while pos < len(body) and body[pos] != 0:
            code = chr(body[pos])
            text, pos = cstr(body, pos + 1)
            fields[code] = text
        return f"{name} {fields.get('C')} {fields.get('M')!r}"
    if kind == "C":
        return f"{name} {body[:-1].decode('utf-8', 'replace')}"
    if kind == "Z":
        return f"{name} {chr(body[0])}"
    if kind == "T":
        (ncols,) = struct.unpack_from("!H", body, 0)
        return f"{name} cols={ncols}"
    return name


class Log:
    def __init__(self, path):
        self.out = open(path, "a", buffering=1) if path else sys.stderr

    def write(self, line):
        self.out.write(line + "\n")


async def pump(reader, writer, log, tag, frontend, state):
    """Copy bytes reader -> writer, logging each complete message.

    state is shared by the two directions of one connection: it counts the
    SSL/GSS requests the client sent, each answered by one bare byte.
    """
    buf = b""
    startup_done = not frontend  # the first frontend message has no type byte
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            buf += data
            while True:
                if not startup_done:
                    if len(buf) < 4:
                        break
                    (length,) = struct.unpack_from("!I", buf, 0)
                    if len(buf) < length:
                        break
                    (code,) = struct.unpack_from("!I", buf, 4)
                    log.write(f"{tag} F Startup/SSL code={code}")
                    buf = buf[length:]
                    # An SSLRequest (80877103) is followed by the real startup.
                    if code in (80877103, 80877104):
                        state["bare_answers"] += 1
                    else:
                        startup_done = True
                    continue
                if not frontend and state["bare_answers"] > 0:
                    if not buf:
                        break
                    # The one-byte 'N'/'S'/'G' answer to an SSL/GSS request.
                    log.write(f"{tag} B SSL/GSS answer {chr(buf[0])!r}")
                    buf = buf[1:]
                    state["bare_answers"] -= 1
                    continue
                if len(buf) < 5:
                    break
                kind = chr(buf[0])
                (length,) = struct.unpack_from("!I", buf, 1)
                if len(buf) < 1 + length:
                    break
                body = buf[5 : 1 + length]
                buf = buf[1 + length :]
                if frontend:
                    log.write(f"{tag} F {describe_frontend(kind, body)}")
                elif kind not in ("D",):  # DataRows are too many to log
                    log.write(f"{tag} B {describe_backend(kind, body)}")
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main():
    listen_port = int(sys.argv[1])
    up_host, up_port = sys.argv[2], int(sys.argv[3])
    log = Log(sys.argv[4] if len(sys.argv) > 4 else None)
    counter = 0

    async def handle(cr, cw):
        nonlocal counter
        counter += 1
        tag = f"c{counter}"
        sr, sw = await asyncio.open_connection(up_host, up_port)
        state = {"bare_answers": 0}
        await asyncio.gather(
            pump(cr, sw, log, tag, True, state),
            pump(sr, cw, log, tag, False, state),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
