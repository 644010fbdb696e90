"""The dashboard in a real browser, end to end: ``ringlab up`` (a real Redis, the cpu service and
the hypervisor, with an operator's token) prints the dashboard's address; Debian's chromium,
headless, driven by Playwright, opens it, is asked for the token, logs in, creates a VM through
the form and sees its console output, its row in the VM table, its slices in the timeline and its
exits by reason; then creates a long-running VM and pauses, resumes and destroys it with the
page's buttons.

Needs /usr/bin/chromium (Debian's ``chromium`` package; .ci/run installs it) and the ``playwright``
package (the test extra; it downloads no browser). Without them the test is skipped, unless
RINGLAB_REQUIRE_BROWSER=1 (CI) makes that a failure. RINGLAB_DASHBOARD_SCREENSHOT=PATH also
creates a VM under every technique and saves a screenshot of the page there (docs/dashboard.png
was made so).

Nothing here measures time: each wait is for something the page shows, with a generous limit.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ringlab.guestos.build import WORKLOADS
from tests.services.up_process import Up

CHROMIUM = os.environ.get("RINGLAB_CHROMIUM", "/usr/bin/chromium")
TOKEN = "dashboard-test-token"
WAIT_MS = 120_000
"""A safety net for each thing the page must show, not a measure."""
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no browser at {CHROMIUM}: apt-get install chromium (or set RINGLAB_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("RINGLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RINGLAB_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        yield context
        context.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Up]:
    running = Up.start(
        tmp_path_factory.mktemp("dashboard") / "data", "--token", TOKEN, "--dashboard", "127.0.0.1:0"
    )
    yield running
    assert running.stop() == 0, "".join(running.err)


def dashboard_url(up: Up) -> str:
    """The address ``ringlab up`` printed."""
    text = "".join(up.out)
    m = re.search(
        r"^dashboard   (http://127\.0\.0\.1:\d+/)  \(log in with the operator's token\)$", text, re.M
    )
    assert m, text
    return m.group(1)


def test_the_dashboard_drives_a_deployment_end_to_end(up: Up, browser: Any) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    page.goto(dashboard_url(up))

    # The deployment has an operator's token: the page asks for it, and refuses another.
    page.wait_for_selector("#login-form", state="visible")
    assert page.is_hidden("#board")
    page.fill("#login-token", "not-the-token")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector('#message:has-text("not the operator\'s token")')
    page.fill("#login-token", TOKEN)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("body[data-live='1']")
    page.wait_for_selector("#live-status[data-state='live']")
    assert page.is_hidden("#login")

    # Create a VM through the form: its console, its row, its slices, its exits.
    page.fill("#create-name", "greeter")
    page.select_option("#create-technique", "bt")
    page.select_option("#create-workload", "hello")
    page.click("#create-submit")
    hello = WORKLOADS["hello"].expected_output()
    assert isinstance(hello, bytes)
    expected = hello.decode()
    page.wait_for_function(
        "text => document.getElementById('console-output').textContent.includes(text)", arg=expected
    )
    assert page.text_content("#console-name") == "greeter"
    row = "#vms tbody tr[data-vm='greeter']"
    page.wait_for_selector(f"{row} .state[data-status='poweroff']")
    assert page.text_content(f"{row} td:nth-child(2)") == "bt"
    assert page.text_content(f"{row} td:nth-child(3)") == "stock"
    page.wait_for_selector("#timeline g.vm-row[data-vm='greeter'] rect.slice")
    page.wait_for_selector("#timeline g.lane rect.slice[data-vm='greeter']")
    page.wait_for_selector(
        "#exits .technique-column[data-technique='bt'] .card[data-vm='greeter'] tr[data-reason]"
    )

    # A VM that runs long enough to be paused, resumed and destroyed with the page's buttons.
    page.fill("#create-name", "worker")
    page.select_option("#create-technique", "trap-emulate")
    page.select_option("#create-workload", "syscall")
    page.fill("#create-iterations", "100000000")
    page.click("#create-submit")
    worker = "#vms tbody tr[data-vm='worker']"
    page.wait_for_selector(f"{worker} .state[data-status='running'], {worker} .state[data-status='runnable']")
    page.click(f"{worker} button[data-action='pause']")
    page.wait_for_selector(f"{worker} .state[data-status='paused']")
    page.click(f"{worker} button[data-action='resume']")
    page.wait_for_selector(f"{worker} button[data-action='pause']")
    page.wait_for_selector("#timeline g.vm-row[data-vm='worker'] rect.slice")
    page.wait_for_selector("#exits .technique-column[data-technique='trap-emulate'] .card[data-vm='worker']")

    # The techniques side by side: hiding one hides its column.
    page.click("#technique-filter button[data-technique='bt']")
    page.wait_for_selector("#exits .technique-column[data-technique='bt']", state="detached")
    page.click("#technique-filter button[data-technique='bt']")
    page.wait_for_selector("#exits .technique-column[data-technique='bt']")

    shot = os.environ.get("RINGLAB_DASHBOARD_SCREENSHOT")
    if shot:
        _screenshot(page, Path(shot))

    # destroy asks to be sure: a second click
    page.click(f"{worker} button[data-action='destroy']")
    page.wait_for_selector(f"{worker} button.armed")
    page.click(f"{worker} button[data-action='destroy']")
    page.wait_for_selector(worker, state="detached")
    page.wait_for_selector("#message:has-text('VM worker destroyed')")
    assert errors == [], errors

    # Logging out asks for the token again.
    page.click("#logout")
    page.wait_for_selector("#login-form", state="visible")
    page.close()


def _screenshot(page: Any, path: Path) -> None:
    """A VM under every technique, a few seconds of them, then the page as a PNG."""
    for technique, workload in (("native", "io"), ("pv", "syscall"), ("hw", "compute")):
        page.fill("#create-name", f"{technique}-{workload}")
        page.select_option("#create-technique", technique)
        page.select_option("#create-workload", workload)
        page.fill("#create-iterations", "")
        page.click("#create-submit")
        page.wait_for_selector(f"#vms tbody tr[data-vm='{technique}-{workload}']")
    page.wait_for_timeout(6000)  # the timeline fills (a picture, not a measure)
    page.click("#vms tbody tr[data-vm='native-io'] button[data-action='console']")
    page.wait_for_timeout(1500)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
