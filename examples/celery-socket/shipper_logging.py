"""Send a Celery worker's log records to shipper's socket input, each with its task id and name.

Import this module from the module that defines the Celery app (see tasks.py); importing it is
enough. Through Celery's `after_setup_logger` and `after_setup_task_logger` signals it adds one
`logging.handlers.SocketHandler` to the root logger and to the task logger (`celery.task`, which
does not propagate to the root), so every record the worker logs also goes, pickled, to the unix
socket shipper listens on:

    shipper tail --socket unix:///run/shipper/shipper.sock

`TaskContextFilter` on that handler adds `task_id` and `task_name` to every record emitted while a
task runs, whichever logger emitted it (a library's, the app's, Celery's own), and to Celery's
"Task ... received" in the main process; shipper puts them in the JSON record it ships, next to
`extra` fields. Other records logged outside a task (the worker's start-up) have neither.

LOG_SHIPPER_SOCKET holds the socket's path (default /run/shipper/shipper.sock), or `@NAME` for the
Linux abstract name `unix://@NAME`. The Helm chart in helm/shipper sets it in the worker container
when `shipper.socket.enabled` is true.

What SocketHandler does when the shipper is not there: it connects on the first record and, if
that fails, drops records and tries again after 1 s, backing off to 30 s; the worker never blocks
or fails because of logging. With the chart's native sidecar the shipper is listening before the
worker starts and stops only after the worker has exited.
"""

import logging
import logging.handlers
import os

from celery._state import get_current_task
from celery.signals import after_setup_logger, after_setup_task_logger

SOCKET_ENV = "LOG_SHIPPER_SOCKET"
DEFAULT_SOCKET = "/run/shipper/shipper.sock"


class TaskContextFilter(logging.Filter):
    """Add `task_id` and `task_name` to records emitted inside a Celery task.

    The same look-up as Celery's own TaskFormatter (`celery.app.log`): the task on top of the
    current process's task stack. Outside a task, Celery's own messages about one ("Task ...
    received", logged by the main process) name it in `record.data`, the context Celery passes
    as `extra` for handlers like this one; the filter takes the id and name from there. A record
    that already has the attributes (set through `extra`) keeps them. Never drops a record.
    """

    def filter(self, record):
        task = get_current_task()
        if task is not None and task.request is not None and task.request.id is not None:
            task_id, task_name = task.request.id, task.name
        else:
            data = getattr(record, "data", None)
            if not (isinstance(data, dict) and data.get("id") and data.get("name")):
                return True
            task_id, task_name = data["id"], data["name"]
        if not hasattr(record, "task_id"):
            record.task_id = task_id
        if not hasattr(record, "task_name"):
            record.task_name = task_name
        return True


def socket_address(value=None):
    """The address SocketHandler connects to: a path, or "\\0NAME" for an abstract `@NAME`."""
    value = value if value is not None else os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    return "\0" + value[1:] if value.startswith("@") else value


def make_socket_handler(address=None):
    """A SocketHandler for a unix stream socket (port None) with the task filter on it.

    Celery's prefork pool forks its child processes after the main process has logged (and so
    connected): without care every child would write into the one inherited connection, and
    frames of different processes would interleave. After a fork the child drops its copy of the
    connection (the parent's stays open) and connects on its own at its first record.
    """
    handler = logging.handlers.SocketHandler(socket_address(address), None)
    handler.addFilter(TaskContextFilter())

    def forget_inherited_connection():
        if handler.sock is not None:
            handler.sock.close()
            handler.sock = None
        handler.retryTime = None

    os.register_at_fork(after_in_child=forget_inherited_connection)
    return handler


_handler = None


def shared_handler():
    """One handler per process for both loggers: one connection, each record sent once."""
    global _handler
    if _handler is None:
        _handler = make_socket_handler()
    return _handler


@after_setup_logger.connect
def add_handler_to_root_logger(logger, **kwargs):
    if shared_handler() not in logger.handlers:
        logger.addHandler(shared_handler())


@after_setup_task_logger.connect
def add_handler_to_task_logger(logger, **kwargs):
    # celery.task does not propagate: records of get_task_logger() loggers reach only its handlers.
    if shared_handler() not in logger.handlers:
        logger.addHandler(shared_handler())
