"""Chat templates: the model's own (jinja2 sandbox), tools, tool results, thinking switch,
and the ChatML fallback."""

from __future__ import annotations

import json

import pytest

from cortex.protocol.errors import ApiError
from neuron.chat.template import CHATML, ChatTemplate
from neuron.demo import demo_template

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_demo_template_renders_system_tools_and_generation_prompt():
    text = ChatTemplate(demo_template()).render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
    )
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in text
    assert text.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")


def test_tool_calls_and_tool_results_are_rendered_in_the_conversation():
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
    ]
    text = ChatTemplate(demo_template()).render(messages, tools=TOOLS)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>" in text


def test_enable_thinking_false_closes_the_thought_in_the_prompt():
    t = ChatTemplate(demo_template())
    msgs = [{"role": "user", "content": "hi"}]
    assert t.render(msgs).endswith("<|im_start|>assistant\n")
    assert t.render(msgs, extra={"enable_thinking": False}).endswith("<think>\n\n</think>\n\n")


def test_model_dir_template_precedence_and_chatml_fallback(tmp_path):
    assert ChatTemplate.from_model_dir(tmp_path).source == CHATML
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "A{{ messages[0].content }}"}))
    assert ChatTemplate.from_model_dir(tmp_path).render([{"role": "user", "content": "x"}]) == "Ax"
    (tmp_path / "chat_template.jinja").write_text("B{{ messages[0].content }}")
    assert ChatTemplate.from_model_dir(tmp_path).render([{"role": "user", "content": "x"}]) == "Bx"
    chatml = ChatTemplate(CHATML).render([{"role": "user", "content": "hi"}])
    assert chatml == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_errors_are_client_errors_and_the_sandbox_holds():
    t = ChatTemplate("{{ raise_exception('only user and assistant roles') }}")
    with pytest.raises(ApiError) as err:
        t.render([{"role": "user", "content": "x"}])
    assert err.value.status == 400 and "only user and assistant roles" in err.value.message
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ApiError):
        evil.render([{"role": "user", "content": "x"}])
