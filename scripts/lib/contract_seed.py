"""Seeds the contract test with real data: uploads a function and runs it
once, then prints `<functionId> <jobId>`. schemathesis takes these for the
path parameters of operations that need existing things, so their success
answers are checked against the document too, not only their 404s."""

import json
import sys
import time
import urllib.request
import uuid

base, key = sys.argv[1], sys.argv[2]
boundary = uuid.uuid4().hex
source = b"def handler(event, context):\n    print('seeded')\n    return event\n"
body = (
    f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"main.py\"\r\n\r\n".encode()
    + source
    + f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"envVars\"\r\n\r\n{{\"SEEDED\":\"1\"}}\r\n--{boundary}--\r\n".encode()
)
req = urllib.request.Request(
    f"{base}/upload",
    data=body,
    method="POST",
    headers={"x-api-key": key, "content-type": f"multipart/form-data; boundary={boundary}"},
)
function_id = json.load(urllib.request.urlopen(req))["functionId"]
req = urllib.request.Request(
    f"{base}/run",
    data=json.dumps({"functionId": function_id, "inputData": {"seed": True}}).encode(),
    method="POST",
    headers={"x-api-key": key, "content-type": "application/json"},
)
job = json.load(urllib.request.urlopen(req))
assert job.get("status") == "SUCCESS", job
# The worker writes the invocation log just after the result.
time.sleep(0.5)
print(function_id, job["jobId"])
