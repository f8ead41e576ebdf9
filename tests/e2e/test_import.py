"""``tunegate import`` from a second gateway into the shared one, through the openai SDK.

The source is a cheap second gateway (no engines, no embedded model) whose one base
is named as OpenAI's ``gpt-4o-mini-2024-07-18``, so its jobs look like OpenAI's; it
never trains (its jobs fail the data checks at once: only their records and files
are imported). The shared gateway maps the OpenAI name to the embedded base. The
imported jobs are cancelled at once, so that they do not train.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from clients.cli import main as tunegate
from clients.importer import IMPORTED_FROM
from tests.e2e.conftest import API_KEY, BASE
from tests.support.gateway_process import GatewayProcess, start_gateway
from tests.support.training import DATA

pytestmark = pytest.mark.e2e

OPENAI_NAME = "gpt-4o-mini-2024-07-18"
SOURCE_KEY = "source-key"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("import-source")
    (root / "no-weights").mkdir()
    running = start_gateway(
        root,
        "--no-vllm-enabled",
        "--no-llamacpp-enabled",
        "--no-embedded-model",
        "--models",
        json.dumps([{"id": OPENAI_NAME, "hf_dir": str(root / "no-weights")}]),
        "--finetune-min-examples",
        "100000",
        api_key=SOURCE_KEY,
    )
    try:
        running.wait_ready(120, path="/health")
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def source_jobs(source: GatewayProcess) -> dict[str, dict]:
    """Two jobs on the source, as an OpenAI pipeline creates them: name -> job."""
    sdk = source.client()
    train, valid, pairs = (
        sdk.files.create(file=(name, (DATA / name).read_bytes()), purpose="fine-tune")
        for name in ("json_answers.jsonl", "json_answers_valid.jsonl", "short_answer_pairs.jsonl")
    )
    sft = sdk.fine_tuning.jobs.create(
        model=OPENAI_NAME,
        training_file=train.id,
        validation_file=valid.id,
        suffix="moved",
        seed=42,
        metadata={"team": "search"},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 0.5}},
        },
    )
    dpo = sdk.fine_tuning.jobs.create(
        model=OPENAI_NAME,
        training_file=pairs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    return {"sft": sft.model_dump(), "dpo": dpo.model_dump()}


def run_cli(monkeypatch, capsys, gateway: GatewayProcess, source: GatewayProcess, *extra):
    monkeypatch.setenv("TUNEGATE_URL", gateway.api_url)
    monkeypatch.setenv("TUNEGATE_API_KEY", API_KEY)
    code = tunegate(["import", "--from", source.api_url, "--api-key", SOURCE_KEY, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def imported_from(client: openai.OpenAI, source_id: str) -> list:
    return list(client.fine_tuning.jobs.list(metadata={IMPORTED_FROM: source_id}))


def test_import_plans_copies_and_maps_then_skips_what_it_imported(
    gateway, client, source, source_jobs, monkeypatch, capsys
):
    sft, dpo = source_jobs["sft"], source_jobs["dpo"]
    plan = run_cli(monkeypatch, capsys, gateway, source, "--dry-run")
    assert f"import {sft['id']} " in plan and f"import {dpo['id']} " in plan
    assert f"{OPENAI_NAME} -> {BASE}, supervised" in plan and f"-> {BASE}, dpo" in plan
    assert not imported_from(client, sft["id"])  # a dry run changes nothing
    none = run_cli(monkeypatch, capsys, gateway, source, "--dry-run", "--status", "succeeded")
    assert none.strip() == "no fine-tuning jobs to import"

    created: list[str] = []
    try:
        out = run_cli(monkeypatch, capsys, gateway, source)
        created = [line.split("\t")[1] for line in out.splitlines() if "\t" in line]
        for job_id in created:  # at once: the imported jobs are not to train here
            client.fine_tuning.jobs.cancel(job_id)
        assert len(created) == 2

        here = imported_from(client, sft["id"])
        assert len(here) == 1 and here[0].id in created
        job = here[0]
        assert job.model == BASE  # the OpenAI name, mapped by the gateway
        assert job.seed == 42 and job.user_provided_suffix == "moved"
        assert job.metadata == {"team": "search", IMPORTED_FROM: sft["id"]}
        assert job.method.type == "supervised"
        wanted = sft["method"]["supervised"]["hyperparameters"]
        shown = job.method.supervised.hyperparameters
        # Explicit values carried over ("auto" ones are resolved once the files are checked).
        assert (shown.n_epochs, shown.learning_rate_multiplier) == (
            wanted["n_epochs"],
            wanted["learning_rate_multiplier"],
        )
        sdk_source = source.client()
        for name in ("training_file", "validation_file"):
            copied = client.files.content(getattr(job, name)).read()
            assert copied == sdk_source.files.content(sft[name]).read()

        (moved_dpo,) = imported_from(client, dpo["id"])
        assert moved_dpo.model == BASE and moved_dpo.method.type == "dpo"
        assert moved_dpo.method.dpo.hyperparameters.beta == 0.2
        assert (
            client.files.content(moved_dpo.training_file).read()
            == (DATA / "short_answer_pairs.jsonl").read_bytes()
        )

        again = run_cli(monkeypatch, capsys, gateway, source, "--job", sft["id"])
        assert f"skip {sft['id']}" in again and "imported before" in again
        assert len(imported_from(client, sft["id"])) == 1
    finally:
        for job_id in created:
            if client.fine_tuning.jobs.retrieve(job_id).status not in ("cancelled", "failed"):
                client.fine_tuning.jobs.cancel(job_id)
