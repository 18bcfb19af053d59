"""The web console in a real headless Chromium, driven by Playwright.

Run by tests/it/console.rs against a running API (it passes --url and --key);
prints one JSON line with the first-load figures. Exits non-zero, with the
step that failed, if anything the console must do does not happen.
"""

import argparse
import json
import re
import sys

from playwright.sync_api import expect, sync_playwright

CHROMIUM_ARGS = [
    # Tests run as root in CI; the machine has no GPU and no way out.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

STEP = [""]

FAILING = '''def handler(event, context):
    raise ValueError("boom: " + str(event.get("n")))
'''


def first_load(page, url):
    """Loads the console cold and reads what it cost from the browser."""
    page.goto(url + "/ui/")
    expect(page.locator("input[name=apiKey]")).to_be_visible()
    return page.evaluate(
        """() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource');
        return {
          transferBytes: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
          decodedBytes: nav.decodedBodySize + res.reduce((n, r) => n + r.decodedBodySize, 0),
          requests: 1 + res.length,
          domContentLoadedMs: nav.domContentLoadedEventEnd,
          interactiveMs: window.__consoleReady,
        };
    }"""
    )


def sign_in(page, key):
    page.fill("input[name=apiKey]", key)
    page.click("button[type=submit]")


def deploy(page, name, code=None):
    page.click("nav.top >> text=Functions")
    page.click("text=New function")
    page.fill("input[name=name]", name)
    if code is not None:
        page.fill("textarea[name=code]", code)
    page.click("button:has-text('Deploy')")
    expect(page.locator("nav.tabs")).to_be_visible()
    expect(page.locator("h2")).to_have_text(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--screenshot", required=True)
    args = ap.parse_args()
    expect.set_options(timeout=20_000)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # A refused call logs "Failed to load resource" (the test provokes
        # some); anything else on the console, a CSP refusal say, is a bug.
        def console_error(msg):
            if msg.type == "error" and "Failed to load resource" not in msg.text:
                errors.append(msg.text)

        page.on("console", console_error)

        STEP[0] = "first load"
        load = first_load(page, args.url)

        STEP[0] = "a wrong key is rejected with the API's message and a request id"
        sign_in(page, "not-the-key-" + "x" * 20)
        alert = page.locator("[role=alert]")
        expect(alert).to_contain_text("Unauthorized")
        expect(alert).to_contain_text("invalid x-api-key")
        expect(alert.locator(".rid code")).to_have_text(re.compile(r"\S{8,}"))
        assert page.evaluate("sessionStorage.getItem('infra.apiKey')") is None, "a wrong key was kept"

        STEP[0] = "sign in"
        sign_in(page, args.key)
        expect(page.locator("h2")).to_have_text("Functions")
        assert page.evaluate("sessionStorage.getItem('infra.apiKey')") == args.key
        assert page.evaluate("localStorage.length") == 0, "the key must stay in the session"

        STEP[0] = "deploy a Python function from the editor's template"
        deploy(page, "greeter")
        fn_url = page.url

        STEP[0] = "run it with input and see the result"
        page.fill("textarea[name=input]", '{"name": "Ada"}')
        page.click("button:text-is('Run')")
        job = page.locator("[data-testid=job][data-status=SUCCESS]")
        expect(job).to_contain_text("Hello, Ada!")
        expect(job).to_contain_text("greeting Ada")

        STEP[0] = "run it async and follow the job to its end"
        page.fill("textarea[name=input]", '{"name": "Grace"}')
        page.click("button:text-is('Run async')")
        expect(page.locator("[data-testid=job]")).to_be_visible()
        job = page.locator("[data-testid=job][data-status=SUCCESS]")
        expect(job).to_contain_text("Hello, Grace!")
        job_id = job.locator(".rid code").inner_text()
        assert re.fullmatch(r"[0-9a-f-]{36}", job_id), job_id

        STEP[0] = "see the runs' log lines"
        page.click("nav.tabs >> text=Logs")
        logs = page.locator("[data-testid=logs] tbody tr")
        expect(logs).to_have_count(2)
        expect(page.locator("[data-testid=logs]")).to_contain_text("greeting Grace")
        expect(page.locator("[data-testid=logs]")).to_contain_text(job_id)
        page.select_option("select[name=status]", "failed")
        expect(page.locator("text=No runs match.")).to_be_visible()
        page.select_option("select[name=status]", "all")
        page.locator("[data-testid=logs] tbody tr").first.click()
        expect(page.locator("tr.detail pre")).to_contain_text("greeting")

        STEP[0] = "more runs through the API, for the charts"
        for i in range(10):
            r = page.request.post(
                args.url + "/run",
                headers={"x-api-key": args.key},
                data={"functionId": fn_url.rsplit("/", 1)[-1], "inputData": {"name": f"n{i}"}},
            )
            assert r.ok, r.text()

        STEP[0] = "see a chart with a point for the runs"
        page.click("nav.tabs >> text=Activity")
        chart = page.locator("[data-testid=chart-invocations]")
        expect(chart.locator("canvas")).to_be_visible()
        expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]"))
        expect(page.locator("[data-testid=chart-duration] canvas")).to_be_visible()
        expect(page.locator(".figures")).to_contain_text("12runs")
        page.screenshot(path=args.screenshot, full_page=True)

        STEP[0] = "the function is in the list with its figures"
        page.click("nav.top >> text=Functions")
        row = page.locator("[data-testid=functions] tbody tr", has_text="greeter")
        expect(row).to_contain_text("python")
        expect(row.locator("td[data-col=errors]")).to_have_text("0 %")

        STEP[0] = "settings are edited and saved"
        row.locator("a").click()
        page.click("nav.tabs >> text=Settings")
        page.fill("input[name=memoryMb]", "256")
        page.click("button:text-is('Save')")
        expect(page.locator(".ok-text")).to_contain_text("Saved")
        expect(page.locator("header.bar")).to_contain_text("256 MB")
        page.fill("input[name=memoryMb]", "5")
        page.click("button:text-is('Save')")
        expect(page.locator("[role=alert]")).to_contain_text("memoryMb")

        STEP[0] = "the code is shown, edited and deployed as a new version"
        page.click("nav.tabs >> text=Code")
        editor = page.locator("textarea[name=code]")
        expect(editor).to_have_value(re.compile("def handler"))
        editor.fill(editor.input_value().replace("Hello", "Hi"))
        page.click("button:text-is('Deploy this version')")
        expect(page.locator(".ok-text")).to_contain_text("Deployed")
        page.click("nav.tabs >> text=Run")
        page.fill("textarea[name=input]", '{"name": "Ada"}')
        page.click("button:text-is('Run')")
        expect(page.locator("[data-testid=job][data-status=SUCCESS]")).to_contain_text("Hi, Ada!")

        STEP[0] = "a failing function's error is shown with its request id"
        deploy(page, "breaker", FAILING)
        page.fill("textarea[name=input]", '{"n": 7}')
        page.click("button:text-is('Run')")
        failed = page.locator("[data-testid=job][data-status=FAILED]")
        expect(failed.locator("[role=alert]")).to_contain_text("ValueError: boom: 7")
        expect(failed.locator(".rid code")).to_have_text(re.compile(r"[0-9a-f-]{36}"))

        STEP[0] = "a failed async job without retries becomes a dead letter, and is redriven"
        page.click("nav.tabs >> text=Settings")
        page.fill("input[name=maxRetries]", "0")
        page.click("button:text-is('Save')")
        expect(page.locator(".ok-text")).to_contain_text("Saved")
        page.click("nav.tabs >> text=Run")
        page.click("button:text-is('Run async')")
        expect(page.locator("[data-testid=job][data-status=FAILED]")).to_contain_text("ValueError: boom: 7")
        page.click("nav.top >> text=Dead letters")
        letters = page.locator("table.list tbody tr")
        expect(letters).to_have_count(1)
        expect(letters).to_contain_text("ValueError")
        letters.locator("button:text-is('Redrive')").click()
        expect(page.locator(".note")).to_contain_text("Redriven: 1")
        page.go_back()

        STEP[0] = "bad input is refused with a clear message"
        page.fill("textarea[name=input]", "{not json")
        page.click("button:text-is('Run')")
        expect(page.locator("[role=alert]").first).to_contain_text("The input is not JSON")

        STEP[0] = "workers and warm pools"
        page.click("nav.top >> text=Workers")
        runtimes = page.locator("[data-testid=runtimes] tbody tr")
        expect(runtimes).to_have_count(4)
        expect(runtimes.filter(has_text="python")).to_contain_text("2")
        expect(runtimes.filter(has_text="go")).to_contain_text("not run here")
        expect(page.locator("[data-testid=workers] tbody tr")).to_have_count(1)
        expect(page.locator("[data-testid=workers] tbody tr")).to_contain_text(re.compile(r"\d+ / 4"))
        expect(page.locator(".meter").first).to_contain_text("MB reserved")
        expect(page.locator("[role=alert]")).to_have_count(0)

        STEP[0] = "dead letters: the redriven job failed again and is back"
        page.click("nav.top >> text=Dead letters")
        expect(page.locator("table.list tbody tr")).to_have_count(1)

        STEP[0] = "sign out forgets the key"
        page.goto(fn_url)
        page.click("text=Sign out")
        expect(page.locator("input[name=apiKey]")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('infra.apiKey')") is None

        assert not errors, f"the page threw: {errors}"
        browser.close()
    print(json.dumps(load))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"console test failed at step {STEP[0]!r}: {e}", file=sys.stderr)
        raise
