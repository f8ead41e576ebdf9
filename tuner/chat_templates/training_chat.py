"""A base's chat template and tokenizer together: what the file checks and the trainer
both use to turn an example into tokens.

The gateway builds one from the base's files with the ``tokenizers`` library;
the trainer builds one from its transformers tokenizer. Both render with the
same template choice (``tuner.chat_templates.choice``) through the same Jinja
environment, so a dataset the checks accept renders and tokenizes in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.chat_templates.base_files import hf_template
from tuner.chat_templates.choice import TemplateChoice, choose_template
from tuner.chat_templates.conversation import template_messages, template_tools
from tuner.chat_templates.jinja_env import render

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class TrainingChat:
    choice: TemplateChoice
    special_tokens: dict[str, str]
    encode: Encode

    def __call__(self, text: str) -> int:
        """Tokens in a text: a ``TrainingChat`` is also the checks' token counter."""
        return len(self.encode(text))

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool = False,
    ) -> str:
        return render(
            self.choice.template, messages, tools, add_generation_prompt, self.special_tokens
        )

    def render_example(self, example: dict[str, Any]) -> str:
        """The whole example as the trainer renders it (raises ``TemplateError``)."""
        return self.render(template_messages(example["messages"]), template_tools(example))

    def tokenize_row(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """A prompt/completion row (``tuner.examples``) as token ids and a mask over the
        completion, as TRL builds them for conversational rows: the completion starts where
        the prompt with its generation prompt and the whole conversation part ways."""
        prompt_ids = self.encode(self.render(row["prompt"], row.get("tools"), True))
        full_ids = self.encode(self.render(row["prompt"] + row["completion"], row.get("tools")))
        shared = 0
        for a, b in zip(prompt_ids, full_ids, strict=False):
            if a != b:
                break
            shared += 1
        return {
            "input_ids": full_ids,
            "completion_mask": [0] * shared + [1] * (len(full_ids) - shared),
        }


def choice_for_checkpoint(
    base_dir: Path, parser_setting: str | None = None
) -> TemplateChoice | None:
    template, special = hf_template(base_dir)
    return choose_template(template, special, parser_setting)


def chat_for_checks(base_dir: Path) -> TrainingChat | None:
    """The gateway's view of a checkpoint: its template choice and its ``tokenizer.json``."""
    tokenizer_file = base_dir / "tokenizer.json"
    template, special = hf_template(base_dir)
    choice = choose_template(template, special)
    if choice is None or not tokenizer_file.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    return TrainingChat(
        choice, special, lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    )


def chat_for_training(base_dir: Path, tokenizer: Any) -> TrainingChat | None:
    """The trainer's view: the same choice, with its transformers tokenizer."""
    template, special = hf_template(base_dir)
    choice = choose_template(template, special)
    if choice is None:
        return None
    return TrainingChat(
        choice, special, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    )
