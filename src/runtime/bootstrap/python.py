# Infra Controller Python bootstrap.
#
# Runs inside every Python instance. It talks to the worker over fd 3 (a
# private socket) with length-prefixed JSON frames, so nothing a handler prints
# can corrupt the protocol. The instance starts generic (a stem cell) and
# becomes a function's warm instance when it receives "load".
import importlib
import io
import json
import os
import resource
import socket
import struct
import sys
import threading
import time
import traceback
import types

_CHANNEL = socket.socket(fileno=3)
# Only this process may speak on the channel: a handler's forked children
# that come back out of the handler must not answer (or read) in its place.
_PID = os.getpid()


def _child_leaves():
    if os.getpid() != _PID:
        os._exit(0)


def _become_subreaper():
    # Orphaned descendants (a fork bomb's grandchildren) are re-parented to us,
    # so _strays() sees every process the handler left behind.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001 - without it, only direct children are seen
        pass
_OUTPUT_LIMIT = 256 * 1024


def _recv_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = _CHANNEL.recv(n - len(buf))
        if not chunk:
            os._exit(0)  # the worker went away
        buf += chunk
    return bytes(buf)


def _read():
    (n,) = struct.unpack(">I", _recv_exact(4))
    return json.loads(_recv_exact(n))


def _write(msg):
    data = json.dumps(msg).encode()
    _CHANNEL.sendall(struct.pack(">I", len(data)) + data)


class _Capture(io.TextIOBase):
    """A bounded in-memory stdout/stderr for one invocation."""

    def __init__(self, limit):
        self._parts = []
        self._size = 0
        self._dropped = 0
        self._limit = limit

    @property
    def encoding(self):
        return "utf-8"

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        room = self._limit - self._size
        if room > 0:
            piece = s[:room]
            self._parts.append(piece)
            self._size += len(piece)
        self._dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def flush(self):
        pass

    def getvalue(self):
        value = "".join(self._parts)
        if self._dropped:
            value += "\n[truncated %d characters]" % self._dropped
        return value


class AIError(Exception):
    """An AI call failed: the node is down or unset, the model is unknown, the call budget is spent..."""


_AI_LOCK = threading.Lock()


def _ai(kind, payload):
    # One request at a time on the channel, even from several threads.
    with _AI_LOCK:
        _write(dict(payload, op="ai", kind=kind))
        reply = _read()
    if reply.get("op") != "aiReply":
        raise AIError("unexpected reply from the worker: %r" % reply.get("op"))
    if not reply.get("ok"):
        raise AIError(reply.get("error") or "the AI call failed")
    return reply.get("value")


def generate(prompt, model=None, **options):
    """Asks the AI node's model (default: the run's modelId) to complete `prompt`; returns the text."""
    return _ai("generate", {"prompt": prompt, "model": model, "options": options})


def chat(messages, model=None, **options):
    """Sends a chat (`[{"role": ..., "content": ...}]`); returns the assistant's message."""
    return _ai("chat", {"messages": messages, "model": model, "options": options})


# The SDK needs nothing packaged: `import infra_ai` works in every function.
_SDK = types.ModuleType("infra_ai", "Ask the AI node's models through the worker.")
_SDK.generate, _SDK.chat, _SDK.AIError = generate, chat, AIError
sys.modules["infra_ai"] = _SDK

# The original platform's `sdk` module, for its functions as they are:
# `sdk.get_input()`, `sdk.get_context()`, `sdk.return_output(data)`, bound to
# the invocation running now (an instance runs one at a time).
_UNSET = object()
_CURRENT = {"event": None, "context": None, "output": _UNSET}


def _get_input():
    """The invocation's input (the original's PAYLOAD)."""
    event = _CURRENT["event"]
    return {} if event is None else event


def _get_context():
    """The original's context dict: request_id, function_id, model_id, memory_mb (a string, as there)."""
    ctx = _CURRENT["context"]
    if ctx is None:
        return {}
    return {
        "request_id": ctx.request_id,
        "function_id": ctx.function_id,
        "model_id": ctx.model_id,
        "memory_mb": str(ctx.memory_limit_in_mb),
    }


def _return_output(data):
    """The invocation's result when the handler returns nothing (the worker
    prints it at the end of stdout, where the original's clients read it)."""
    _CURRENT["output"] = data


_ORIGINAL_SDK = types.ModuleType("sdk", "The original Infra Controller's function SDK.")
_ORIGINAL_SDK.get_input, _ORIGINAL_SDK.get_context, _ORIGINAL_SDK.return_output = (
    _get_input,
    _get_context,
    _return_output,
)
sys.modules["sdk"] = _ORIGINAL_SDK


class Context:
    """What a handler learns about its invocation (AWS Lambda's names where they exist)."""

    def __init__(self, msg):
        self.request_id = msg["requestId"]
        self.aws_request_id = self.request_id
        self.function_id = msg["functionId"]
        self.function_name = msg.get("functionName") or self.function_id
        self.memory_limit_in_mb = msg["memoryMb"]
        self.model_id = msg.get("modelId")
        self.ai = _SDK
        self._deadline = time.monotonic() + msg["timeoutMs"] / 1000.0

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _error(exc):
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def _reset_peak():
    # Resets VmHWM so the peak is this invocation's, not the instance's lifetime.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _strays():
    """Reaps finished children; returns how many are still alive."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            break
    alive = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                alive += len(f.read().split())
    except OSError:
        pass
    return alive


def _capture():
    out, err = _Capture(_OUTPUT_LIMIT), _Capture(_OUTPUT_LIMIT)
    sys.stdout, sys.stderr = out, err
    return out, err


def _release():
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


# What an instance keeps of its start-up environment when it takes its
# function's (which is applied here, inside the sandbox, never at launch).
_BASE_ENV = ("PATH", "HOME", "TMPDIR", "PWD", "LANG", "PYTHONDONTWRITEBYTECODE", "LD_LIBRARY_PATH")


def _become(msg):
    """The instance takes its function's environment (and, as a stem cell, its memory limit)."""
    if msg.get("memoryBytes"):
        limit = int(msg["memoryBytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if msg.get("env") is not None:
        base = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
        os.environ.clear()
        os.environ.update(base)
        os.environ.update(msg["env"])
        if "TZ" in msg["env"]:
            time.tzset()


def _load(msg):
    out, err = _capture()
    start = time.perf_counter()
    try:
        _become(msg)
        sys.path.insert(0, msg["codeDir"])
        # A function that ships its own `sdk` gets its own, not the original's.
        code_dir = msg["codeDir"]
        if os.path.exists(os.path.join(code_dir, "sdk.py")) or os.path.isdir(os.path.join(code_dir, "sdk")):
            sys.modules.pop("sdk", None)
        module = importlib.import_module(msg["module"])
        fn = getattr(module, msg["function"], None)
        if fn is None and msg["function"] == "handler":
            # The original's runner: `handler`, else `main(event, context)`.
            fn = getattr(module, "main", None)
        if not callable(fn):
            raise AttributeError("module %r has no callable %r" % (msg["module"], msg["function"]))
    except MemoryError as e:
        _release()
        _write({"op": "loadError", "status": "OOM", "error": _error(e), "stdout": out.getvalue(), "stderr": err.getvalue()})
        return None
    except BaseException as e:  # noqa: B036 - a broken module must not kill the instance silently
        _release()
        _write({"op": "loadError", "status": "ERROR", "error": _error(e), "stdout": out.getvalue(), "stderr": err.getvalue()})
        return None
    _release()
    _write({"op": "loaded", "initMs": (time.perf_counter() - start) * 1000.0})
    return fn


def _invoke(fn, msg):
    out, err = _capture()
    _reset_peak()
    status, value_json, error = "SUCCESS", "null", None
    start = time.perf_counter()
    context = Context(msg)
    _CURRENT.update(event=msg.get("event"), context=context, output=_UNSET)
    try:
        value = fn(msg.get("event"), context)
        if value is None and _CURRENT["output"] is not _UNSET:
            value = _CURRENT["output"]
        _child_leaves()
        duration = (time.perf_counter() - start) * 1000.0
        try:
            value_json = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            status, error = "ERROR", {
                "type": "ResultNotSerializable",
                "message": "the handler returned a value that is not JSON-serializable: %s" % e,
            }
    except MemoryError as e:
        _child_leaves()
        duration = (time.perf_counter() - start) * 1000.0
        status, error = "OOM", _error(e)
    except BaseException as e:  # noqa: B036 - SystemExit and friends are the handler's errors too
        _child_leaves()
        duration = (time.perf_counter() - start) * 1000.0
        status, error = "ERROR", _error(e)
    _release()
    _write({
        "op": "result",
        "status": status,
        "valueJson": value_json,
        "error": error,
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "durationMs": duration,
        "peakMemoryBytes": _peak_bytes(),
        "strays": _strays(),
    })


def main():
    _become_subreaper()
    fn = None
    _write({"op": "ready", "pid": os.getpid()})
    while True:
        msg = _read()
        op = msg.get("op")
        if op == "load":
            fn = _load(msg)
        elif op == "invoke" and fn is not None:
            _invoke(fn, msg)
        else:
            _write({"op": "protocolError", "message": "unexpected op %r" % op})


main()
