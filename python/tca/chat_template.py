"""Chat templates: the Jinja template a GGUF stores in `tokenizer.chat_template`, rendered in a sandbox.

Rendering follows the Hugging Face conventions the templates are written for: `trim_blocks` and
`lstrip_blocks`, the variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and the
helpers `raise_exception`, `strftime_now` and a `tojson` that keeps non-ASCII text as is.
"""

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when the model stores no template: ChatML, which most small instruct models follow.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """A template that does not parse, or that refuses the messages (raise_exception)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template: {message}")


def _tojson(value: Any, indent: Optional[int] = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, template: Optional[str], bos_token: str = "", eos_token: str = "") -> None:
        """template None or empty: the ChatML fallback."""
        self.is_fallback = not template
        self.source = CHATML_TEMPLATE if self.is_fallback else template
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateError(
                f"chat template (tokenizer.chat_template) does not parse: {e.message} (line {e.lineno})"
            ) from None

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """The prompt text for these messages ({"role": ..., "content": ...} each)."""
        for i, m in enumerate(messages):
            if "role" not in m or "content" not in m:
                raise ChatTemplateError(f"chat message {i} needs 'role' and 'content', got {sorted(m)}")
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except ChatTemplateError:
            raise
        except (jinja2.TemplateError, TypeError, AttributeError, KeyError, IndexError) as e:
            raise ChatTemplateError(f"chat template failed to render: {e}") from None
