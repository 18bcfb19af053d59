"""Uses a client generated from /openapi.json (openapi-python-client) as a
stranger would: upload a function, run it asynchronously, poll its status.
Fails (exit 1) on any step that does not work through the generated code."""

import importlib
import json
import sys
import time

work, base, key = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, work)
client_pkg = importlib.import_module("client")
api_client = client_pkg.AuthenticatedClient(base_url=base, token=key, prefix="", auth_header_name="x-api-key")

upload = importlib.import_module("client.api.functions.upload")
run = importlib.import_module("client.api.jobs.run")
status = importlib.import_module("client.api.jobs.status")
models = importlib.import_module("client.models")
from client.types import File  # noqa: E402  (generated at run time)

source = b"def handler(event, context):\n    return {'doubled': event['n'] * 2}\n"
form = models.UploadForm(
    file=File(payload=source, file_name="main.py", mime_type="text/x-python"),
    name="generated-client",
    memory_mb=128,
    max_retries=0,
)
resp = upload.sync_detailed(client=api_client, body=form)
assert resp.status_code == 200, (resp.status_code, resp.content)
function_id = json.loads(resp.content)["functionId"]

body = models.RunRequest(function_id=function_id, input_data=models.RunRequestInputData.from_dict({"n": 21}))
# The generated code puts a header value in as given: a bool would not be sent.
resp = run.sync_detailed(client=api_client, body=body, x_async="true")
assert resp.status_code == 202, (resp.status_code, resp.content)
job_id = json.loads(resp.content)["jobId"]

deadline = time.time() + 60
while True:
    resp = status.sync_detailed(client=api_client, job_id=job_id)
    assert resp.status_code == 200, (resp.status_code, resp.content)
    view = json.loads(resp.content)
    if view["status"] != "pending":
        break
    assert time.time() < deadline, view
    time.sleep(0.1)
assert view["status"] == "SUCCESS" and view["result"] == {"doubled": 42}, view
print(f"generated client: uploaded {function_id}, ran job {job_id}: {view['status']} {view['result']}")
