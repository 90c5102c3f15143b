"""The report of the seed MNIST CNN's training step, opened in headless Chromium: every stage
clicked, one node and one kernel shown, the table sorted, the charts drawn, no console error,
no network request, a screenshot saved under the test's folder and the load time printed.

Debian's chromium is driven through Playwright (never `playwright install`: browsers cannot be
downloaded here), in a fresh profile directory (Playwright takes it as launch_persistent_context's
argument and refuses a --user-data-dir flag). `make test` installs chromium and sets
KCOMPILER_REQUIRE_BROWSER=1, which turns a missing browser into a failure; elsewhere the test is
skipped without one."""
import importlib.util
import json
import os
import re
import time

import pytest

import kcompiler
from examples.seed_models import mnist_cnn
from kcompiler import keras

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_LIMIT_BYTES = 5_000_000


def _browser_problem():
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    problem = _browser_problem()
    if problem:
        if os.environ.get("KCOMPILER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the report's browser test must run under `make test`: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="module")
def mnist_report(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = mnist_cnn()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    path = tmp_path_factory.mktemp("report") / "mnist_cnn.html"
    kcompiler.report(model, path=str(path), batch_size=64, steps=2)
    return path


def test_mnist_cnn_report_in_chromium(browser_page, mnist_report, tmp_path):
    page = browser_page
    html = mnist_report.read_text(encoding="utf-8")
    size = len(html.encode("utf-8"))
    assert size < PAGE_LIMIT_BYTES, f"the MNIST CNN report is {size / 1e6:.2f} MB"
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html,
                                re.S).group(1))
    errors, requests = [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: None if request.url.startswith("file://") else requests.append(request.url))

    start = time.perf_counter()
    page.goto(mnist_report.as_uri(), wait_until="load")
    page.wait_for_selector("html[data-rendered-ms]")
    load_seconds = time.perf_counter() - start
    rendered_ms = float(page.get_attribute("html", "data-rendered-ms"))
    print(f"\nMNIST CNN training-step report: {size / 1e6:.2f} MB, loaded and rendered in "
          f"{load_seconds * 1e3:.0f} ms (script done {rendered_ms:.0f} ms after navigation start)")

    assert page.inner_text("#model-name") == data["model"]["name"]
    assert "Total params" in page.inner_text("#model-summary")
    buttons = page.locator("button.stage-button")
    assert [buttons.nth(i).get_attribute("data-stage") for i in range(buttons.count())] == \
        ["traced", "shaped", "differentiated", "fused", "planned", "scheduled"]

    for i, stage in enumerate(data["stages"]):  # every stage draws every one of its nodes
        buttons.nth(i).click()
        assert page.get_attribute("#graph", "data-stage") == stage["name"]
        assert page.locator("#graph svg g.node").count() == len(stage["nodes"])
        box = page.locator("#graph svg").bounding_box()
        assert box["width"] > 100 and box["height"] > 100
    forward = [n for n in data["stages"][2]["nodes"] if n["phase"] == "forward"]
    backward = [n for n in data["stages"][2]["nodes"] if n["phase"] == "backward"]
    assert forward and backward

    buttons.nth(3).click()  # fused: click a fused group, see its members and notes
    group = next(n for n in data["stages"][3]["nodes"] if n.get("members"))
    page.locator(f"#graph #node-{group['id']}").click()
    assert page.inner_text("#details-title").startswith(f"%{group['id']} {group['op']}")
    assert " · ".join(group["members"]) in page.inner_text("#details-attributes")
    assert page.locator(f"#graph #node-{group['id']}.selected").count() == 1

    rows = page.locator("#kernel-table tbody tr")
    assert rows.count() == len(data["kernels"])
    slowest = max(data["kernels"], key=lambda k: k["seconds"])
    assert rows.first.get_attribute("data-kernel") == slowest["name"]  # sorted by time, slowest first
    rows.first.click()  # the kernel: its node in the kernel-description stage, its IR highlighted
    assert page.get_attribute("#graph", "data-stage") == "scheduled"
    assert page.inner_text("#details-title").startswith(f"%{slowest['nodes'][0]} ")
    assert page.locator("#details-source .c-keyword").count() > 0
    assert "define" in page.inner_text("#details-source")
    node = next(n for n in data["stages"][-1]["nodes"] if n["id"] == slowest["nodes"][0])
    assert page.locator("#details-description").count() == ("description" in node)  # contraction templates have none
    described = next(n for n in data["stages"][-1]["nodes"] if "description" in n)
    page.locator(f"#kernel-table tbody tr[data-kernel={described['kernel']}]").click()
    assert page.inner_text("#details-description").startswith(f"kernel {described['kernel']}")

    page.locator("#kernel-table th[data-key=bytes]").click()  # sort by bytes moved, largest first
    cells = page.locator("#kernel-table tbody tr td:nth-child(5)").all_inner_texts()
    moved = [float(t.replace(",", "")) for t in cells]
    assert moved == sorted(moved, reverse=True)

    assert page.locator("#comparison-chart rect.bar").count() == 6
    assert page.locator("#comparison-table tr").count() == 3
    assert page.locator("#memory-svg rect.buffer").count() == len(data["memory"]["buffers"])
    assert page.locator("#notes-list li").count() == len(data["notes"])

    page.locator("#graph-section").scroll_into_view_if_needed()
    screenshot = tmp_path / "mnist_cnn_report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    assert errors == [], errors
    assert requests == [], requests
