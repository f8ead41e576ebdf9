"""The ``tunegate`` command line.

    tunegate serve [--port 8000 ...]            run a gateway (flags: every setting)
    tunegate models                             the models a gateway serves, and their engines
    tunegate chat [--temperature T] MODEL [PROMPT ...]   one-shot, or interactive; streamed
    tunegate files upload FILE                  upload a fine-tuning dataset
    tunegate tune DATA --model M [--suffix S] [--epochs N] [--export gguf] [--trial [N]] [--follow]
    tunegate jobs list | show JOB | cancel JOB
    tunegate adapters list | rm ADAPTER
    tunegate merge ADAPTER [--quantization q8_0] [--follow]
    tunegate import --from URL [--api-key KEY] [--job ID] [--status S] [--dry-run]
                                                re-create another service's fine-tuning jobs

It talks to ``$TUNEGATE_URL`` (default http://127.0.0.1:8000/v1) with
``$TUNEGATE_API_KEY``, through the official ``openai`` SDK (and httpx for the
routes OpenAI has no client for). Errors are one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clients.progress import ProgressBar
from clients.trial import format_report, trial_body

DEFAULT_URL = "http://127.0.0.1:8000/v1"
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


def _api_url() -> str:
    return os.environ.get("TUNEGATE_URL", DEFAULT_URL).rstrip("/")


def _client() -> Any:  # the SDK import is deferred: `tunegate serve` does not need it
    from openai import OpenAI

    return OpenAI(
        base_url=_api_url(), api_key=os.environ.get("TUNEGATE_API_KEY", "local"), max_retries=2
    )


def _http() -> Any:
    import httpx

    key = os.environ.get("TUNEGATE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=_api_url(), headers=headers, timeout=60)


def _admin(method: str, path: str, **kwargs: Any) -> Any:
    """A gateway route OpenAI's SDK has no method for; OpenAI-shaped errors become one line."""
    with _http() as http:
        response = http.request(method, path, **kwargs)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise CliError(f"{response.status_code}: {message}")
    return response.json()


class CliError(Exception):
    pass


# --- commands ---------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.settings_cli import settings_from_args

    serve(settings_from_args(args))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for model in _client().models.list():
        extra = model.model_extra or {}
        parent = f"  (from {extra['parent']})" if extra.get("parent") else ""
        print(f"{model.id}\t{extra.get('engine', '?')}\t{extra.get('kind', '?')}{parent}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    client = _client()
    history: list[dict[str, str]] = []

    def ask(prompt: str) -> None:
        history.append({"role": "user", "content": prompt})
        stream = client.chat.completions.create(
            model=args.model,
            messages=history,
            stream=True,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
        )
        answer = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                answer.append(chunk.choices[0].delta.content)
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(answer)})

    if args.prompt:
        ask(" ".join(args.prompt))
        return 0
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            return 0
        if prompt.strip():
            ask(prompt)


def cmd_files_upload(args: argparse.Namespace) -> int:
    with Path(args.file).open("rb") as data:
        uploaded = _client().files.create(file=data, purpose=args.purpose)
    print(uploaded.id)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    client = _client()
    with Path(args.data).open("rb") as data:
        training = client.files.create(file=data, purpose="fine-tune")
    hyperparameters = {
        k: v
        for k, v in {
            "n_epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate_multiplier": args.lr_multiplier,
            "beta": args.beta,
        }.items()
        if v
    }
    if "beta" in hyperparameters and args.method != "dpo":
        raise CliError("--beta is for --method dpo")
    job = client.fine_tuning.jobs.create(
        model=args.model,
        training_file=training.id,
        suffix=args.suffix,
        method={"type": args.method, args.method: {"hyperparameters": hyperparameters}},  # type: ignore[misc,dict-item]
        extra_body={**({"export": args.export} if args.export else {}), **trial_body(args.trial)}
        or None,
    )
    print(f"job {job.id} created", file=sys.stderr)
    if not args.follow:
        print(job.id)
        return 0
    return _follow_job(client, job.id)


def _follow_job(client: Any, job_id: str) -> int:
    bar = ProgressBar(sys.stderr)
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for event in reversed(events):
            if event.id in seen:
                continue
            seen.add(event.id)
            if event.type == "metrics" and event.data:
                bar.update(event.data)
            elif event.level in ("warn", "error"):
                bar.message(f"{event.level}: {event.message}")
        if job.status in FINAL_STATUSES:
            bar.close()
            if job.status != "succeeded":
                error = job.error.message if job.error else job.status
                raise CliError(f"job {job_id} {job.status}: {error}")
            report = (job.model_extra or {}).get("trial_report")
            print(job.fine_tuned_model if report is None else format_report(report))
            return 0
        bar.status(job.status)
        time.sleep(1)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    for job in _client().fine_tuning.jobs.list(limit=args.limit).data:
        print(f"{job.id}\t{job.status}\t{job.model}\t{job.fine_tuned_model or ''}")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = _client().fine_tuning.jobs.retrieve(args.job)
    print(job.model_dump_json(indent=2, exclude_none=True))
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    print(_client().fine_tuning.jobs.cancel(args.job).status)
    return 0


def cmd_adapters_list(args: argparse.Namespace) -> int:
    for adapter in _admin("GET", "/adapters")["data"]:
        aliases = ",".join(adapter.get("aliases") or [])
        print(f"{adapter['id']}\t{adapter['base']}\trank {adapter['rank']}\t{aliases}")
    return 0


def cmd_adapters_rm(args: argparse.Namespace) -> int:
    print(_admin("DELETE", f"/adapters/{args.adapter}")["id"], "removed")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    merge = _admin(
        "POST", f"/adapters/{args.adapter}/merge", json={"quantization": args.quantization}
    )
    print(f"merge {merge['id']} started: {merge['model']}", file=sys.stderr)
    while args.follow and merge["status"] in ("queued", "running"):
        time.sleep(1)
        merge = _admin("GET", f"/merges/{merge['id']}")
    if merge["status"] == "failed":
        raise CliError(f"merge {merge['id']} failed: {merge['error']['message']}")
    print(merge["model"] if args.follow else merge["id"])
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from openai import OpenAI

    from clients.importer import Importer, describe

    key = args.api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise CliError("--api-key (or OPENAI_API_KEY) is needed to read the source's jobs")
    source = OpenAI(base_url=args.source.rstrip("/"), api_key=key, max_retries=2)
    importer = Importer(source, _client(), say=lambda line: print(line, file=sys.stderr))
    plan = importer.plan(args.job or (), args.status or ())
    print("\n".join(describe(plan)))
    if args.dry_run:
        return 0
    for imported in importer.run(plan):
        print(f"{imported.source_id}\t{imported.job_id}")
    if importer.failed:
        raise CliError(f"{len(importer.failed)} job(s) not imported (see above)")
    return 0


# --- the parser -------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from gateway.settings_cli import add_settings_flags

    parser = argparse.ArgumentParser(
        prog="tunegate", description="tunegate: a local OpenAI-compatible gateway with a LoRA tuner"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a gateway")
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("models", help="list the models a gateway serves").set_defaults(func=cmd_models)

    chat = sub.add_parser("chat", help="chat with a model (streamed)")
    chat.add_argument("model")
    chat.add_argument("prompt", nargs="*", help="one-shot prompt; interactive when omitted")
    chat.add_argument("--max-tokens", type=int, default=512)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.set_defaults(func=cmd_chat)

    files = sub.add_parser("files", help="uploaded files").add_subparsers(
        dest="action", required=True
    )
    upload = files.add_parser("upload", help="upload a dataset")
    upload.add_argument("file")
    upload.add_argument("--purpose", default="fine-tune")
    upload.set_defaults(func=cmd_files_upload)

    tune = sub.add_parser("tune", help="fine-tune a model on a JSONL dataset")
    tune.add_argument(
        "data",
        help='JSONL file: one {"messages": [...]} per line, or for dpo one preference pair',
    )
    tune.add_argument("--model", required=True, help="base model id, or an adapter to continue")
    tune.add_argument("--method", choices=("supervised", "dpo"), default="supervised")
    tune.add_argument("--suffix")
    tune.add_argument("--epochs", type=int)
    tune.add_argument("--batch-size", type=int)
    tune.add_argument("--lr-multiplier", type=float)
    tune.add_argument("--beta", type=float, help="DPO's beta")
    tune.add_argument(
        "--export",
        action="append",
        metavar="gguf[:QUANT]",
        help="also merge and export a GGUF when training ends",
    )
    tune.add_argument(
        "--trial",
        nargs="?",
        type=int,
        const=0,
        metavar="N",
        help="a trial run on N examples (default 32): does the data teach something?",
    )
    tune.add_argument(
        "--follow",
        action="store_true",
        help="show a live progress bar; print the model id at the end",
    )
    tune.set_defaults(func=cmd_tune)

    jobs = sub.add_parser("jobs", help="fine-tuning jobs").add_subparsers(
        dest="action", required=True
    )
    jobs_list = jobs.add_parser("list")
    jobs_list.add_argument("--limit", type=int, default=20)
    jobs_list.set_defaults(func=cmd_jobs_list)
    for name, func in (("show", cmd_jobs_show), ("cancel", cmd_jobs_cancel)):
        command = jobs.add_parser(name)
        command.add_argument("job")
        command.set_defaults(func=func)

    adapters = sub.add_parser("adapters", help="registered adapters").add_subparsers(
        dest="action", required=True
    )
    adapters.add_parser("list").set_defaults(func=cmd_adapters_list)
    remove = adapters.add_parser("rm")
    remove.add_argument("adapter")
    remove.set_defaults(func=cmd_adapters_rm)

    merge = sub.add_parser("merge", help="merge an adapter into a GGUF model for llama.cpp")
    merge.add_argument("adapter")
    merge.add_argument("--quantization", default="q8_0", choices=("q8_0", "f16", "q4_k_m"))
    merge.add_argument("--follow", action="store_true", help="wait; print the merged model id")
    merge.set_defaults(func=cmd_merge)

    importing = sub.add_parser(
        "import",
        help="re-create another service's fine-tuning jobs here (OpenAI, or another tunegate)",
    )
    importing.add_argument(
        "--from", dest="source", required=True, help="its API URL, e.g. https://api.openai.com/v1"
    )
    importing.add_argument("--api-key", help="its API key (default: $OPENAI_API_KEY)")
    importing.add_argument("--job", action="append", help="only this job (repeatable)")
    importing.add_argument(
        "--status", action="append", help="only jobs with this status there (repeatable)"
    )
    importing.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    importing.set_defaults(func=cmd_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line, never a traceback
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if type(exc).__name__ in ("APIConnectionError", "ConnectError"):
            message = f"cannot reach a gateway at {_api_url()} (is it running? set TUNEGATE_URL)"
        print(f"tunegate: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
