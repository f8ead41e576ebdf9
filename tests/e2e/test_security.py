"""What a web page can do to a gateway on the user's machine: nothing, in a real Chromium.

A keyless gateway (the default, and the real target) is started cheaply, without
engines: the checks stand in front of every route, engines or not. A page
served from another origin tries to read a file and to start work with the
requests a page may send without asking (no-cors fetches, form posts); a page
from an origin listed in ``cors_origins`` does the same reads and succeeds, so
the browser and the page are shown to work. A DNS-rebinding request (a foreign
name resolved to 127.0.0.1) is refused, on this gateway and on the shared one
with a key. A large upload leaves the event loop free.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from gateway.engines.process import free_port
from tests.e2e.conftest import API_KEY
from tests.e2e.test_ui import chromium
from tests.support.adapter_factory import write_adapter, write_base
from tests.support.gateway_process import GatewayProcess, start_gateway

pytestmark = pytest.mark.e2e

BASE = "tiny"
SECRET = b'{"messages": [{"role": "user", "content": "the secret plan"}]}\n'
ATTACKER_HOST = "attacker.example"
REBOUND_HOST = "rebind.attacker.example"
RESOLVE_TO_LOCALHOST = (  # both names lead to this machine, as a rebound name does
    f"--host-resolver-rules=MAP {ATTACKER_HOST} 127.0.0.1, MAP {REBOUND_HOST} 127.0.0.1"
)
RESULTS = re.compile(r'<pre id="results"[^>]*>([^<]*)</pre>')
# The goal is a 1 GiB upload; 256 MiB keeps the test quick and was enough to stall it: the
# adapter upload's copy of 256 MiB, on the event loop before, took 4-5 s on a 2-core machine.
UPLOAD_MIB = 256

# Requests a page may send cross-site without a preflight: no-cors fetches (a Blob body has
# no Content-Type, a string is text/plain, FormData is multipart) and form posts.
ATTACKER_PAGE = """<!doctype html><html><body>
<pre id="results"></pre>
<iframe name="sink"></iframe>
<form id="text-form" method="POST" enctype="text/plain" target="sink" action="{gw}/v1/adapters">
  <input name='{{"path": "{victim}", "base": "{base}", "suffix": "byform' value='"}}'>
</form>
<script>
const GW = "{gw}";
const results = {{}};
async function attempt(name, request) {{
  try {{
    const response = await request();
    results[name] = response.type === "opaque" ? "opaque" : await response.text();
  }} catch (error) {{
    results[name] = "blocked: " + error.name;
  }}
  document.getElementById("results").textContent = JSON.stringify(results);  // progress
}}
function form(fields) {{
  const body = new FormData();
  for (const [name, value] of Object.entries(fields)) body.append(name, value, ...(
    value instanceof Blob ? ["data.jsonl"] : []));
  return body;
}}
const post = (path, body) => fetch(GW + path, {{method: "POST", mode: "no-cors", body}});
(async () => {{
  await attempt("read_content", () => fetch(GW + "/v1/files/{file_id}/content"));
  await attempt("read_files", () => fetch(GW + "/v1/files"));
  await attempt("read_models", () => fetch(GW + "/v1/models"));
  const job = JSON.stringify({{model: "{base}", training_file: "{file_id}"}});
  await attempt("job_blob", () => post("/v1/fine_tuning/jobs", new Blob([job])));
  await attempt("job_text", () => post("/v1/fine_tuning/jobs", job));
  const adapter = JSON.stringify({{path: "{victim}", base: "{base}", suffix: "bytext"}});
  await attempt("adapter_text", () => post("/v1/adapters", adapter));
  await attempt("adapter_blob", () => post("/v1/adapters", new Blob([adapter])));
  const data = new Blob([{jsonl}]);
  await attempt("fine_tune_form", () => post("/v1/fine_tunes",
    form({{file: data, model: "{base}", suffix: "byform"}})));
  await attempt("file_form", () => post("/v1/files", form({{file: data, purpose: "fine-tune"}})));
  await attempt("delete_file", () => fetch(GW + "/v1/files/{file_id}", {{method: "DELETE"}}));
  // Virtual time stands still while the post is in flight: the timer fires after it.
  const sink = document.querySelector("iframe");
  results.text_form = await new Promise(done => {{
    sink.onload = () => done("loaded");
    setTimeout(() => done("submitted"), 2000);
    document.getElementById("text-form").submit();
  }});
  document.getElementById("results").textContent = JSON.stringify(results);
  document.body.dataset.done = "true";
}})();
</script></body></html>
"""

# The same reads and one import, from an origin the gateway lists: CORS lets them through.
TRUSTED_PAGE = """<!doctype html><html><body><pre id="results"></pre><script>
const GW = "{gw}";
(async () => {{
  const results = {{}};
  results.read_content = await (await fetch(GW + "/v1/files/{file_id}/content")).text();
  const created = await fetch(GW + "/v1/adapters", {{
    method: "POST",
    headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{path: "{trusted}", base: "{base}", suffix: "trusted"}}),
  }});
  results.import_status = created.status;
  document.getElementById("results").textContent = JSON.stringify(results);
  document.body.dataset.done = "true";
}})();
</script></body></html>
"""


class _Pages:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Pages]:
    """A web server of its own: another origin than the gateway's."""
    served = _Pages(tmp_path_factory.mktemp("pages"))
    yield served
    served.close()


@pytest.fixture(scope="module")
def imports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("imports")
    write_adapter(folder / "victim")
    write_adapter(folder / "trusted")
    return folder


@pytest.fixture(scope="module")
def keyless(
    tmp_path_factory: pytest.TempPathFactory, pages: _Pages, imports: Path
) -> Iterator[GatewayProcess]:
    """The default: no key, on 127.0.0.1. Its one base is on an external vLLM that is not
    there: adapters of it can be imported, and nothing here needs an engine's answer."""
    data_root = tmp_path_factory.mktemp("keyless")
    base_dir = write_base(data_root / "bases" / BASE)
    absent_vllm = f"http://127.0.0.1:{free_port()}"
    running = start_gateway(
        data_root,
        "--no-embedded-model",
        "--models",
        json.dumps([{"id": BASE, "hf_dir": str(base_dir), "vllm_urls": [absent_vllm]}]),
        "--no-llamacpp-enabled",
        "--adapter-import-dirs",
        json.dumps([str(imports)]),
        "--cors-origins",
        json.dumps([f"http://127.0.0.1:{pages.port}"]),
        "--log-level",
        "debug",  # the access log shows each refusal
    )
    try:
        running.wait_ready(120, path="/health")
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def secret_file(keyless: GatewayProcess) -> str:
    return keyless.client().files.create(file=("secret.jsonl", SECRET), purpose="fine-tune").id


def browse(tmp_path: Path, url: str) -> str:
    return chromium(tmp_path, RESOLVE_TO_LOCALHOST, "--dump-dom", url)


def page_results(dom: str) -> dict:
    assert 'data-done="true"' in dom, dom[-2000:]
    found = RESULTS.search(dom)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def adapters_of(gateway: GatewayProcess) -> list[str]:
    with gateway.http() as http:
        return [a["id"] for a in http.get("/v1/adapters").json()["data"]]


def test_a_page_of_another_origin_can_read_nothing_and_start_nothing(
    keyless, pages, imports, secret_file, tmp_path
):
    values = {
        "gw": keyless.url,
        "file_id": secret_file,
        "base": BASE,
        "victim": str(imports / "victim"),
        "trusted": str(imports / "trusted"),
        "jsonl": json.dumps(SECRET.decode()),
    }
    (pages.folder / "attacker.html").write_text(ATTACKER_PAGE.format(**values))
    (pages.folder / "trusted.html").write_text(TRUSTED_PAGE.format(**values))

    attacked = page_results(browse(tmp_path, f"http://{ATTACKER_HOST}:{pages.port}/attacker.html"))
    for read in ("read_content", "read_files", "read_models", "delete_file"):
        assert attacked[read].startswith("blocked"), (read, attacked[read])
    assert "secret plan" not in json.dumps(attacked)
    assert attacked["text_form"] in ("loaded", "submitted")

    # The gateway saw each attempt and refused it, before any route ran.
    log = keyless.log_path.read_text(errors="replace")
    for line in (
        f'"GET /v1/files/{secret_file}/content HTTP/1.1" 403',
        '"POST /v1/fine_tuning/jobs HTTP/1.1" 403',
        '"POST /v1/adapters HTTP/1.1" 403',
        '"POST /v1/fine_tunes HTTP/1.1" 403',
        '"POST /v1/files HTTP/1.1" 403',
    ):
        assert line in log, line
    assert log.count('"POST /v1/adapters HTTP/1.1" 403') == 3  # text, Blob, text/plain form

    # Nothing was created, deleted or changed.
    client = keyless.client()
    assert [f.id for f in client.files.list()] == [secret_file]
    assert client.fine_tuning.jobs.list().data == []
    assert adapters_of(keyless) == []

    # From a listed origin the same browser reads the file and imports an adapter.
    trusted = page_results(browse(tmp_path, f"http://127.0.0.1:{pages.port}/trusted.html"))
    assert trusted == {"read_content": SECRET.decode(), "import_status": 201}
    assert [a.split(":")[3] for a in adapters_of(keyless)] == ["trusted"]


def test_a_rebound_name_is_refused_in_the_browser(keyless, secret_file, tmp_path):
    own = browse(tmp_path, f"{keyless.url}/v1/files")
    assert secret_file in own  # the control: by its own name the gateway answers
    rebound = browse(tmp_path, f"http://{REBOUND_HOST}:{keyless.url.rsplit(':', 1)[1]}/v1/files")
    assert "host_not_allowed" in rebound and secret_file not in rebound


@pytest.mark.parametrize("which", ["keyless", "keyed"])
def test_a_rebound_host_is_refused_even_with_the_key(which, request):
    gateway: GatewayProcess = request.getfixturevalue(
        "keyless" if which == "keyless" else "gateway"
    )
    port = gateway.url.rsplit(":", 1)[1]
    with gateway.http() as http:
        assert http.get("/v1/models").status_code == 200
        for path in ("/v1/models", "/v1/files", "/health"):
            answer = http.get(path, headers={"Host": f"{REBOUND_HOST}:{port}"})
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "host_not_allowed"
        cross_site = http.post(
            "/v1/files",
            files={"file": ("d.jsonl", SECRET)},
            data={"purpose": "fine-tune"},
            headers={"Origin": f"http://{ATTACKER_HOST}"},
        )
        assert cross_site.status_code == 403 and API_KEY not in cross_site.text


def stall_count(http: httpx.Client) -> float:
    metrics = http.get("/metrics").text
    found = re.search(r"^tunegate_event_loop_stall_seconds_count (\S+)$", metrics, re.M)
    assert found, metrics[:2000]
    return float(found.group(1))


def test_a_large_upload_leaves_the_event_loop_free(keyless, tmp_path):
    big = tmp_path / "big.jsonl"
    with big.open("wb") as writer:
        block = (SECRET * ((1 << 20) // len(SECRET) + 1))[: 1 << 20]
        for _ in range(UPLOAD_MIB):
            writer.write(block)
    latencies: list[float] = []
    uploading = threading.Event()

    def probe() -> None:
        with keyless.http() as http:
            while uploading.is_set():
                started = time.monotonic()
                http.get("/health")
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    with keyless.http() as http:
        assert stall_count(http) == 0
        uploading.set()
        prober = threading.Thread(target=probe)
        prober.start()
        try:
            with big.open("rb") as data:
                stored = http.post(
                    "/v1/files", files={"file": ("big.jsonl", data)}, data={"purpose": "user_data"}
                )
            with big.open("rb") as data:  # not a LoRA: copied in, then refused
                adapter = http.post(
                    "/v1/adapters",
                    files={"adapter_model": ("m.safetensors", data), "adapter_config": b"{}"},
                    data={"base": BASE, "suffix": "big"},
                )
            deleted = http.delete(f"/v1/files/{stored.json()['id']}")
        finally:
            uploading.clear()
            prober.join()
        assert stored.status_code == 200 and stored.json()["bytes"] == UPLOAD_MIB << 20
        assert adapter.status_code == 400, adapter.text
        assert deleted.status_code == 200
        assert stall_count(http) == 0
    assert latencies and max(latencies) < 1.0, sorted(latencies)[-5:]
