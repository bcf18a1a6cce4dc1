#!/usr/bin/env python3
"""Send log records to the shipper through one of Python's standard logging handlers.

    socket_sender.py HANDLER ADDRESS COUNT TAG [--plain]

HANDLER: socket-tcp, socket-unix, datagram-udp, datagram-unix, syslog-unix, syslog-udp,
syslog-tcp. ADDRESS: HOST:PORT, a socket path, or @NAME for an abstract name.

Unless --plain, the first records are the hard ones: a `logger.exception` traceback, Korean and
emoji text, a 50 KiB message, and `extra` fields of several types. Every record carries its number
as `seq` (an `extra` field, and `seq=N` in the message so syslog records carry it too). Prints
`sent N` at the end; the handler is closed first, so everything it sent is in the socket.
"""

import datetime
import logging
import logging.handlers
import socket
import sys

SPECIAL = 3


def address(kind, text):
    if kind.endswith(("-tcp", "-udp")):
        host, port = text.rsplit(":", 1)
        return (host, int(port))
    if text.startswith("@"):
        return "\0" + text[1:]
    return text


def handler_for(kind, addr):
    if kind in ("socket-tcp", "socket-unix"):
        if kind == "socket-unix":
            return logging.handlers.SocketHandler(addr, None)
        return logging.handlers.SocketHandler(*addr)
    if kind in ("datagram-udp", "datagram-unix"):
        if kind == "datagram-unix":
            return logging.handlers.DatagramHandler(addr, None)
        return logging.handlers.DatagramHandler(*addr)
    if kind == "syslog-unix":
        return logging.handlers.SysLogHandler(address=addr, socktype=socket.SOCK_DGRAM)
    if kind == "syslog-udp":
        return logging.handlers.SysLogHandler(address=addr)
    if kind == "syslog-tcp":
        return logging.handlers.SysLogHandler(address=addr, socktype=socket.SOCK_STREAM)
    raise SystemExit(f"unknown handler {kind}")


def main():
    kind, text, count, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    plain = "--plain" in sys.argv[5:]
    handler = handler_for(kind, address(kind, text))
    if kind.startswith("syslog"):
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger(f"sender.{tag}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    first = 0 if plain else SPECIAL
    if not plain:
        try:
            1 / 0
        except ZeroDivisionError:
            logger.exception("failed seq=%d", 0, extra={"seq": 0, "sender": tag})
        logger.warning("한국어 로그 🚀✨ seq=%d", 1, extra={"seq": 1, "sender": tag})
        logger.info(
            "big seq=%d %s",
            2,
            "x" * (50 * 1024),
            extra={
                "seq": 2,
                "sender": tag,
                "n": 7,
                "ok": True,
                "ratio": 0.5,
                "huge": 2**70,
                "when": datetime.datetime(2026, 12, 1, 12, 0, 0),
                "items": ["a", 1, None],
            },
        )
    for seq in range(first, count):
        logger.info("record seq=%d", seq, extra={"seq": seq, "sender": tag})
    handler.close()
    print(f"sent {count}", flush=True)


if __name__ == "__main__":
    main()
