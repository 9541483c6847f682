"""The request limits as pure functions (issue 17), against hand computation: the size an image
processor would make of an image (checked before it runs), text length before tokenizing, lone
surrogates, and the settings' own checks."""

import json
from types import SimpleNamespace

import pytest

from adallava.serve import Settings
from adallava.serve.engine import processed_size
from adallava.serve.errors import APIError
from adallava.serve.protocol import check_text_length, check_unicode, parse_body


@pytest.mark.parametrize(
    ("size", "image", "expected"),
    [
        ({"shortest_edge": 48}, (1, 100_000), (48, 4_800_000)),  # the probe's 274-byte PNG, by hand
        ({"shortest_edge": 336}, (640, 480), (448, 336)),  # LLaVA-1.5: short side to 336
        ({"shortest_edge": 336, "longest_edge": 1000}, (100, 1000), (100, 1000)),  # capped by the long side
        ({"longest_edge": 512}, (2048, 1024), (512, 256)),
        ({"height": 224, "width": 224}, (1, 100_000), (224, 224)),  # fixed size: any image is bounded
    ],
)
def test_processed_size_follows_the_processors_resize_rule(size, image, expected):
    assert processed_size(SimpleNamespace(size=size, do_resize=True), *image) == expected


def test_processed_size_is_unknown_without_a_resize_rule():
    assert processed_size(SimpleNamespace(size={"shortest_edge": 48}, do_resize=False), 10, 10) is None
    assert processed_size(SimpleNamespace(size={"max_pixels": 10}, do_resize=True), 10, 10) is None
    assert processed_size(None, 10, 10) is None


def test_text_length_counts_string_contents_and_text_parts_in_either_form():
    messages = [
        {"role": "system", "content": "abcde"},  # 5
        {"role": "user", "content": [{"type": "image_url"}, {"type": "text", "text": "xyz"}]},  # 3
    ]
    check_text_length(messages, 8)
    with pytest.raises(APIError) as error:
        check_text_length(messages, 7)
    assert error.value.status == 400 and error.value.code == "context_length_exceeded"
    assert "8 characters" in error.value.message and "the limit is 7" in error.value.message


def test_a_lone_surrogate_is_named_by_its_path_but_a_pair_is_text():
    check_unicode(json.loads('{"messages": [{"content": "\\ud83d\\ude00"}]}'))  # an emoji, escaped as a pair
    with pytest.raises(APIError) as error:
        check_unicode(json.loads('{"messages": [{"content": "ok \\udc00"}]}'))
    assert error.value.param == "messages.0.content" and "\\udc00" in error.value.message


def test_the_message_count_is_checked_before_the_schema():
    body = json.dumps({"messages": [{"role": "nobody"}] * 3}).encode()  # also invalid: the count comes first
    with pytest.raises(APIError) as error:
        parse_body(body, max_messages=2)
    assert error.value.code == "too_many_messages" and "at most 2" in error.value.message


def test_settings_refuse_an_aspect_ratio_below_one():
    with pytest.raises(ValueError, match="max_image_aspect_ratio"):
        Settings(max_image_aspect_ratio=0.5)
    with pytest.raises(ValueError, match="prepare_workers"):
        Settings(prepare_workers=0)
