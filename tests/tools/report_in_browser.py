"""Open a Snakemake report in headless chromium and say what it shows.

    python tests/tools/report_in_browser.py results/report.html

prints JSON: the categories in the report's menu, and for every result its
caption as the browser renders it and, for images, whether the report's
viewer showed the image and its decoded size. Chromium comes from
``tests/tools/chromium.sh`` (Debian's package, installed when absent).

How: a copy of the report gets a small script that, once the page has
loaded, opens each result the way a click would (``app.showResultInfo``,
``app.setView``), reads the page, and writes its findings into the DOM,
which ``chromium --dump-dom`` prints.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "ageatlas-report-check"

PROBE = (
    """
<script>
window.addEventListener("load", function () {
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  (async function () {
    const out = {categories: Object.keys(categories), results: {}, errors: []};
    await pause(300);
    out.menu = document.querySelector("#app").innerText;
    for (const path of Object.keys(results)) {
      const entry = results[path];
      const found = {name: entry.name, mime: entry.mime_type};
      try {
        app.showResultInfo(path);
        await pause(100);
        found.info = document.querySelector("#app").innerText;
        if (entry.mime_type.startsWith("image/")) {
          app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
          await pause(100);
          const img = Array.from(document.querySelectorAll("#app img"))
            .find((i) => i.src === entry.data_uri);
          found.shown = Boolean(img);
          for (let i = 0; img && !img.complete && i < 50; i++) await pause(100);
          if (img) {
            found.width = img.naturalWidth;
            found.height = img.naturalHeight;
          }
        }
      } catch (e) {
        out.errors.push(path + ": " + e);
      }
      out.results[path] = found;
    }
    const pre = document.createElement("pre");
    pre.id = "MARKER_ID";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  })();
});
</script>
"""
).replace("MARKER_ID", MARKER)


def chromium() -> str:
    """Path of chromium; installs Debian's package when absent (tests/tools/chromium.sh)."""
    done = subprocess.run(["bash", str(HERE / "chromium.sh")], capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"no headless chromium: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def browse(report: str | Path, timeout: int = 180) -> dict:
    """What headless chromium shows of ``report`` (a Snakemake HTML report)."""
    html = Path(report).read_text()
    if "</body>" not in html:
        raise ValueError(f"{report} is not an HTML page")
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / "report.html"
        head, _, tail = html.rpartition("</body>")
        probed.write_text(head + PROBE + "</body>" + tail)
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp}/profile",
            "--virtual-time-budget=60000",
            "--dump-dom",
            probed.as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    match = re.search(rf'<pre id="{MARKER}">(.*?)</pre>', done.stdout, re.S)
    if not match:
        raise RuntimeError(
            f"the report's page did not finish rendering in chromium (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )
    text = (
        match.group(1)
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&amp;", "&")
    )
    return json.loads(text)


if __name__ == "__main__":
    print(json.dumps(browse(sys.argv[1]), indent=2))
