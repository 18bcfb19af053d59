# Starts an original-style Python program (`python main.py`, run as a
# script) with the original platform's `sdk` module importable:
#   python3 -I -u -c <this> <code dir> <entry file>
# Input comes from PAYLOAD_FILE, else PAYLOAD (JSON), else {}; what the
# program prints is its output; its exit code is the run's.
import json
import os
import runpy
import sys
import traceback
import types

_UNSET = object()
_INPUT = [_UNSET]


def get_input():
    """The run's input: PAYLOAD_FILE, else PAYLOAD, else {} ({} on a parse error, logged to stderr)."""
    if _INPUT[0] is _UNSET:
        value = {}
        try:
            path = os.environ.get("PAYLOAD_FILE")
            if path:
                with open(path, encoding="utf-8") as f:
                    value = json.load(f)
            elif os.environ.get("PAYLOAD"):
                value = json.loads(os.environ["PAYLOAD"])
        except (OSError, ValueError) as e:
            print("sdk.get_input: cannot read the input: %s" % e, file=sys.stderr)
            value = {}
        _INPUT[0] = value
    return _INPUT[0]


def get_context():
    """request_id, function_id, model_id, memory_mb (a string, as the original's)."""
    return {
        "request_id": os.environ.get("JOB_ID"),
        "function_id": os.environ.get("FUNCTION_ID"),
        "model_id": os.environ.get("LLM_MODEL"),
        "memory_mb": os.environ.get("MEMORY_MB"),
    }


def return_output(data):
    """Prints the output: a dict or list as one line of JSON, anything else as str()."""
    if isinstance(data, (dict, list)):
        print(json.dumps(data))
    else:
        print(str(data))
    sys.stdout.flush()


def _main():
    code_dir, entry = sys.argv[1], sys.argv[2]
    # A program that ships its own `sdk` imports its own.
    if not (os.path.exists(os.path.join(code_dir, "sdk.py")) or os.path.isdir(os.path.join(code_dir, "sdk"))):
        sdk = types.ModuleType("sdk", "The original Infra Controller's function SDK.")
        sdk.get_input, sdk.get_context, sdk.return_output = get_input, get_context, return_output
        sys.modules["sdk"] = sdk
    path = os.path.join(code_dir, entry)
    # As `python main.py` would: the script's dir first on the path, its
    # name in argv[0], run as __main__.
    sys.path.insert(0, os.path.dirname(path))
    sys.argv = [path]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as e:  # noqa: B036 - reported as `python main.py` would, then exit 1
        # The traceback from the program's own first frame: the launcher's
        # and runpy's frames are the platform's, not the function's.
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb or e.__traceback__)
        sys.stderr.flush()
        sys.exit(1)


_main()
