"""Chat templates: which one a base trains and serves with, and tunegate's tool template."""

from tuner.chat_templates.choice import (
    TOOL_TEMPLATE_NAME,
    TOOL_TEMPLATE_PARSER,
    TemplateChoice,
    choose_template,
    expresses_tools,
    tool_template_for,
    tool_template_source,
)
from tuner.chat_templates.jinja_env import TemplateError, render
from tuner.chat_templates.training_chat import (
    TrainingChat,
    chat_for_checks,
    chat_for_training,
    choice_for_checkpoint,
)

__all__ = [
    "TOOL_TEMPLATE_NAME",
    "TOOL_TEMPLATE_PARSER",
    "TemplateChoice",
    "TemplateError",
    "TrainingChat",
    "chat_for_checks",
    "chat_for_training",
    "choice_for_checkpoint",
    "choose_template",
    "expresses_tools",
    "render",
    "tool_template_for",
    "tool_template_source",
]
