"""The import plan: what each source job becomes here, and what is skipped, and why.

The source and the target stand in for two ``openai.OpenAI`` clients (the e2e test
runs the real command between two gateways)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from clients.importer import IMPORTED_FROM, Importer, describe


class NotFound(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.body = {"message": message, "code": "model_not_found"}


def job(job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": "succeeded",
        "model": "gpt-4o-mini-2024-07-18",
        "training_file": "file-train",
        "validation_file": None,
        "seed": 7,
        "metadata": None,
        "created_at": 1,
        **fields,
    }


class Source:
    def __init__(self, jobs: list[dict[str, Any]], files: dict[str, bytes]) -> None:
        self.fine_tuning = SimpleNamespace(
            jobs=SimpleNamespace(
                list=lambda limit: iter(jobs[::-1]),  # newest first, as OpenAI lists them
                retrieve=lambda job_id: next(j for j in jobs if j["id"] == job_id),
            )
        )
        self.files = SimpleNamespace(
            retrieve=lambda file_id: SimpleNamespace(filename=f"{file_id}.jsonl"),
            content=lambda file_id: SimpleNamespace(read=lambda: files[file_id]),
        )


class Target:
    def __init__(self, models: dict[str, dict[str, Any]]) -> None:
        self.created: list[dict[str, Any]] = []
        self.uploads: list[tuple[str, bytes]] = []

        def retrieve(name: str) -> dict[str, Any]:
            if name not in models:
                raise NotFound(f"The model '{name}' is an OpenAI model name that is not mapped")
            return models[name]

        def create(**body: Any) -> SimpleNamespace:
            if body["model"] not in models:
                raise NotFound(f"'{body['model']}' is an OpenAI model name that is not mapped")
            self.created.append({**body, "id": f"ftjob-{len(self.created)}"})
            return SimpleNamespace(id=self.created[-1]["id"], model=body["model"])

        def upload(file: tuple[str, bytes], purpose: str) -> SimpleNamespace:
            self.uploads.append(file)
            return SimpleNamespace(id=f"file-{len(self.uploads)}")

        self.models = SimpleNamespace(retrieve=retrieve)
        self.fine_tuning = SimpleNamespace(
            jobs=SimpleNamespace(list=lambda limit: iter(self.created), create=create)
        )
        self.files = SimpleNamespace(create=upload)


MODELS = {
    "gpt-4o-mini-2024-07-18": {
        "id": "gpt-4o-mini-2024-07-18",
        "kind": "openai_name",
        "parent": "smollm2-135m-instruct",
    },
    "smollm2-135m-instruct": {"id": "smollm2-135m-instruct", "kind": "base", "parent": None},
}


def test_jobs_carry_method_hyperparameters_suffix_seed_and_metadata():
    supervised = {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 1.8}
    jobs = [
        job(
            "ftjob-a",
            validation_file="file-valid",
            user_provided_suffix="bot",
            metadata={"team": "search"},
            method={"type": "supervised", "supervised": {"hyperparameters": supervised}},
        ),
        # An older job: top-level hyperparameters, no method (supervised).
        job("ftjob-b", hyperparameters={"n_epochs": "auto"}, model="smollm2-135m-instruct"),
    ]
    files = {"file-train": b"train", "file-valid": b"valid"}
    target = Target(MODELS)
    importer = Importer(Source(jobs, files), target, say=lambda line: None)
    plan = importer.plan()
    assert [(p.source_id, p.local_model, p.skip) for p in plan] == [
        ("ftjob-a", "smollm2-135m-instruct", None),
        ("ftjob-b", "smollm2-135m-instruct", None),
    ]
    done = importer.run(plan)
    assert [d.job_id for d in done] == ["ftjob-0", "ftjob-1"]
    first, second = target.created
    assert first["model"] == "gpt-4o-mini-2024-07-18"  # the gateway maps it
    assert first["method"] == {"type": "supervised", "supervised": {"hyperparameters": supervised}}
    assert (first["suffix"], first["seed"]) == ("bot", 7)
    assert first["metadata"] == {"team": "search", IMPORTED_FROM: "ftjob-a"}
    assert second["method"]["supervised"]["hyperparameters"] == {"n_epochs": "auto"}
    assert "suffix" not in second
    # Each file is copied once, its bytes as they were.
    assert target.uploads == [("file-train.jsonl", b"train"), ("file-valid.jsonl", b"valid")]
    assert (first["training_file"], first["validation_file"]) == ("file-1", "file-2")
    assert second["training_file"] == "file-1"
    # A second import skips both.
    again = Importer(Source(jobs, files), target, say=lambda line: None).plan()
    assert [p.skip for p in again] == ["imported before, as ftjob-0", "imported before, as ftjob-1"]


def test_what_cannot_be_imported_is_skipped_with_the_reason():
    jobs = [
        job("ftjob-rl", method={"type": "reinforcement", "reinforcement": {}}),
        job("ftjob-unmapped", model="gpt-4o"),
        job("ftjob-full", metadata={f"k{i}": "v" for i in range(16)}),
        job("ftjob-other", status="failed", created_at=0),
    ]
    importer = Importer(Source(jobs, {"file-train": b"t"}), Target(MODELS), say=lambda line: None)
    plan = {p.source_id: p for p in importer.plan()}
    assert "reinforcement method is not supported" in (plan["ftjob-rl"].skip or "")
    assert plan["ftjob-unmapped"].skip is None  # the gateway decides, when it is created
    assert "not mapped" in (plan["ftjob-unmapped"].note or "")
    assert IMPORTED_FROM in (plan["ftjob-full"].skip or "")
    assert plan["ftjob-other"].skip is None
    lines = describe(list(plan.values()))
    assert lines[0].startswith("import ftjob-other [failed] gpt-4o-mini-2024-07-18 -> smollm2")
    assert any(line.startswith("skip ftjob-rl") for line in lines)
    only = importer.plan(job_ids=["ftjob-other"])
    assert [p.source_id for p in only] == ["ftjob-other"]
    assert [p.source_id for p in importer.plan(statuses=["failed"])] == ["ftjob-other"]
    assert describe([]) == ["no fine-tuning jobs to import"]
    # Creating: the refused job is reported, the others carry on.
    done = importer.run(importer.plan(job_ids=["ftjob-unmapped", "ftjob-other"]))
    assert [d.source_id for d in done] == ["ftjob-other"]
    assert "not mapped" in importer.failed["ftjob-unmapped"]


def test_the_command_needs_the_sources_key(monkeypatch, capsys):
    from clients.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["import", "--from", "https://api.openai.com/v1", "--dry-run"]) == 1
    assert "--api-key (or OPENAI_API_KEY)" in capsys.readouterr().err
