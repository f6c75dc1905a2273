"""Background work on an OS thread in every worker class, gevent's included."""
from __future__ import annotations

import sys
import threading


def start_native_thread(target, *args, name: str) -> None:
    """Runs ``target(*args)`` on an OS thread, also in a gevent worker.

    gevent's monkey-patching makes ``threading.Thread`` a greenlet: CPU work (a model load, a fold-in) would
    then stop every answer of its worker until done, and a greenlet that waits on a lock or condition made
    before the patch (the app is built before gunicorn forks) blocks the worker's only OS thread. gevent's
    original ``start_new_thread`` gives the job a thread of its own, as under the other worker classes.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        monkey.get_original("_thread", "start_new_thread")(target, args)
    else:
        threading.Thread(target=target, args=args, daemon=True, name=name).start()
