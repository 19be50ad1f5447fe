"""PaliGemma's detection output decoded by hand-worked values; --strip-special; --input lines."""

from __future__ import annotations

import pytest

from paligemma_cli.infer.predict import (Box, decode_boxes, is_detection_prompt, read_input_file,
                                          strip_special)
from paligemma_cli.errors import PgmError


def test_boxes_are_value_over_1024_of_the_original_side():
    # 640 x 480 image. cat: y 256/1024*480 = 120, x 512/1024*640 = 320, y 768/1024*480 = 360,
    # x 1000/1024*640 = 625. dog: y 0, x 64/1024*640 = 40, y 1023/1024*480 = 479.53125, x 512 -> 320.
    text = "<loc0256><loc0512><loc0768><loc1000> cat ; <loc0000><loc0064><loc1023><loc0512> dog"
    assert decode_boxes(text, 640, 480) == [Box("cat", 320.0, 120.0, 625.0, 360.0),
                                            Box("dog", 40.0, 0.0, 320.0, 479.53)]


def test_segmentation_tokens_after_the_box_and_a_missing_label():
    # 100 wide, 200 high: x 128/1024*100 = 12.5, y 128/1024*200 = 25, x 896 -> 87.5, y 896 -> 175.
    text = ("<loc0128><loc0128><loc0896><loc0896><seg001><seg127><seg064> person ; "
            "<loc0000><loc0000><loc0512><loc0512>")
    assert decode_boxes(text, 100, 200) == [Box("person", 12.5, 25.0, 87.5, 175.0), Box("", 0.0, 0.0, 50.0, 100.0)]


def test_fewer_than_four_loc_tokens_are_no_box():
    assert decode_boxes("<loc0001><loc0002><loc0003> cat", 10, 10) == []
    assert decode_boxes("a cat on a mat", 10, 10) == []


def test_strip_special_keeps_the_words():
    assert strip_special("<loc0256><loc0512><loc0768><loc1000> cat ; <loc0001><loc0002><loc0003><loc0004><seg012> dog") \
        == "cat ; dog"
    assert strip_special("two") == "two"


@pytest.mark.parametrize("prompt, detection", [("detect cat", True), ("Detect car ; person", True),
                                               ("segment dog", True), ("answer en detect what?", False),
                                               ("caption en", False)])
def test_detection_prompts(prompt, detection):
    assert is_detection_prompt(prompt) is detection


def test_input_lines_relative_paths_default_prompt_and_extra_keys(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"image": "a.jpg", "prefix": "detect cat", "id": 7}\n\n{"image": "/abs/b.png"}\n')
    a, b = read_input_file(path, "caption en")
    assert (a.image, a.prefix, a.meta) == (tmp_path / "a.jpg", "detect cat", {"id": 7})
    assert (str(b.image), b.prefix, b.meta) == ("/abs/b.png", "caption en", {})


@pytest.mark.parametrize("text, needle", [('{"image": "a.jpg"\n', "line 1: invalid JSON"),
                                          ('{"img": "a.jpg"}\n', 'line 1 needs "image"'),
                                          ("\n", "holds no lines")])
def test_bad_input_lines_name_the_line(tmp_path, text, needle):
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    with pytest.raises(PgmError, match=needle):
        read_input_file(path, "caption en")
