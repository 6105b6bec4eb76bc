"""The README's "Watch the farm", followed as written, gives the farm's page in a browser."""

import os
import re
import signal
import subprocess
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.farm import ROOT, Farm, free_port


def watch_the_farm() -> tuple[str, str]:
    """The section's command and the address it says to open."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Watch the farm", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S)
    address = re.search(r"<(http://[^>]+)>", section)
    assert command and address, "the section lost its command or its address"
    return command.group(1).strip(), address.group(1)


def test_the_readme_command_gives_a_page_in_a_browser(farm: Farm, page: Page,
                                                     tmp_path: Path) -> None:
    command, address = watch_the_farm()
    assert command == "bash deploy/farm.sh"
    port = free_port()
    # The farm's own broker vhost, data folder and port, so it stands beside other farms.
    env = {**farm.env, "CORRAL_WEB_BIND": f"127.0.0.1:{port}"}
    env.pop("CORRAL_SECRET", None)
    output = open(tmp_path / "farm.sh.log", "wb")
    up = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=output,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = address.replace(":8480", f":{port}")
        farm.wait_for(lambda: f"Watch the farm at {url}" in (tmp_path / "farm.sh.log").read_text(),
                      120, "corral up to print the monitor's address")

        def page_loads() -> bool:
            try:
                return page.goto(url).status == 200
            except Exception:  # not listening yet
                return False

        farm.wait_for(page_loads, 60, "the monitor to answer")
        expect(page.locator("h1")).to_have_text("The farm")
        expect(page.locator('[data-service="registry"]')).to_have_text("registry: up",
                                                                       timeout=30_000)
        expect(page.locator('[data-count="idle"]')).not_to_have_text("0", timeout=60_000)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(90)
        output.close()
