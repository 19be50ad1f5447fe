"""COCO caption metrics on a three-image corpus small enough to work out by hand.

Image 1 is predicted perfectly, image 2 drops one word ("the"), image 3 has no prediction.
After PTB tokenisation (lower-case, punctuation dropped) no n-gram is shared between images
except "a" (images 1 and 3), which matters only for an identical pair, so the numbers below
follow from the pycocoevalcap definitions with pencil and paper.
"""

from __future__ import annotations

import math
import shutil

import pytest

from paligemma_cli.errors import PgmError
from paligemma_cli.metrics import captioning
from paligemma_cli.metrics.captioning import caption_metrics

requires_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")

REFERENCES = {
    1: ["a man rides a horse"],
    2: ["Two dogs play in the snow."],
    3: ["a red bus"],
}
PREDICTIONS = {1: "A man rides a horse.", 2: "two dogs play in snow", "extra": "ignored"}


@pytest.fixture(scope="module")
def result():
    import pycocoevalcap.spice.get_stanford_models as stanford

    def no_download(*args, **kwargs):
        raise AssertionError("caption_metrics tried to download Stanford CoreNLP")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stanford, "urlretrieve", no_download)
        return caption_metrics(PREDICTIONS, REFERENCES)  # one METEOR JVM for the module


@requires_java
def test_bleu_matches_hand_computation(result):
    # Clipped n-gram matches / candidate n-grams, summed over images (corpus BLEU):
    #   image 1: 5/5, 4/4, 3/3, 2/2; image 2: 5/5, 3/4, 2/3, 1/2; image 3: nothing.
    #   -> 10/10, 7/8, 5/6, 3/4.
    # Brevity penalty: candidate length 5 + 5 + 0 = 10, closest reference lengths 5 + 6 + 3 = 14.
    bp = math.exp(1 - 14 / 10)
    p = [1.0, 7 / 8, 5 / 6, 3 / 4]
    for n in range(1, 5):
        expected = math.prod(p[:n]) ** (1 / n) * bp
        # pycocoevalcap smooths each ratio as (matches + 1e-15) / (total + 1e-9).
        assert result["metrics"][f"Bleu_{n}"] == pytest.approx(expected, rel=1e-8)


@requires_java
def test_perfect_caption_scores_one(result):
    image = result["per_image"][1]
    # BLEU-4 is 1 up to the 1e-9 smoothing in the denominators: (2 + 1e-15) / (2 + 1e-9) < 1.
    assert image["Bleu_4"] == pytest.approx(1.0, abs=1e-8)
    assert image["ROUGE_L"] == 1.0
    assert image["METEOR"] == pytest.approx(1.0)
    # CIDEr-D of an identical single reference: cosine 1 for n = 1..4, no length penalty, x10.
    assert image["CIDEr"] == pytest.approx(10.0)


@requires_java
def test_cider_matches_hand_computation(result):
    # Image 2: every n-gram occurs in one image only, so all tf-idf weights are equal (log 3)
    # and each cosine is shared / sqrt(candidate n-grams * reference n-grams):
    #   1-grams 5/sqrt(5*6), 2-grams 3/sqrt(4*5), 3-grams 2/sqrt(3*4), 4-grams 1/sqrt(2*3).
    # Length penalty exp(-d^2 / (2 * 6^2)) with d = 4 - 5 (pycocoevalcap counts bigrams): d = -1.
    cosines = [5 / math.sqrt(30), 3 / math.sqrt(20), 2 / math.sqrt(12), 1 / math.sqrt(6)]
    image2 = 10 * sum(cosines) / 4 * math.exp(-1 / 72)
    assert result["per_image"][2]["CIDEr"] == pytest.approx(image2)
    assert result["per_image"][3]["CIDEr"] == 0.0  # missing prediction = empty caption
    assert result["metrics"]["CIDEr"] == pytest.approx((10 + image2 + 0) / 3)


@requires_java
def test_rouge_l_and_meteor(result):
    # ROUGE-L image 2: LCS 5, precision 5/5, recall 5/6, beta 1.2:
    #   (1 + 1.44) * P * R / (R + 1.44 * P).
    p, r = 1.0, 5 / 6
    image2 = (1 + 1.2**2) * p * r / (r + 1.2**2 * p)
    assert result["per_image"][2]["ROUGE_L"] == pytest.approx(image2)
    assert result["metrics"]["ROUGE_L"] == pytest.approx((1 + image2 + 0) / 3)
    # METEOR has no pencil-and-paper value here; check its ordering and range.
    meteor = [result["per_image"][i]["METEOR"] for i in (1, 2, 3)]
    assert meteor[0] > meteor[1] > meteor[2] == 0.0
    assert 0 < result["metrics"]["METEOR"] < 1


@requires_java
def test_only_reference_images_are_scored(result):
    assert set(result["per_image"]) == {1, 2, 3}
    assert set(result["metrics"]) >= {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}


@requires_java
def test_spice_reported_unavailable_with_install_hint(result):
    if not captioning._spice_missing_jars(captioning._spice_lib_dir()):
        pytest.skip("Stanford CoreNLP jars are installed here: SPICE runs")
    assert "SPICE" not in result["metrics"]
    hint = result["unavailable"]["SPICE"]
    assert "stanford-corenlp-3.6.0.jar" in hint and "stanford-corenlp-3.6.0-models.jar" in hint
    assert captioning._spice_lib_dir() in hint
    # why (Java and the jars), how (the zip, where to put the jars, pgm doctor), in one line
    assert "\n" not in hint and "Java" in hint and captioning.CORENLP_URL in hint and "pgm doctor" in hint


def test_spice_jar_detection(tmp_path):
    assert captioning._spice_missing_jars(str(tmp_path)) == list(captioning.CORENLP_JARS)
    for jar in captioning.CORENLP_JARS:
        (tmp_path / jar).write_bytes(b"")
    assert captioning._spice_missing_jars(str(tmp_path)) == []


def test_missing_java_is_a_user_error(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    with pytest.raises(PgmError) as excinfo:
        caption_metrics({1: "a cat"}, {1: ["a cat"]})
    assert "Java" in excinfo.value.message
    assert "default-jre-headless" in excinfo.value.hint


def test_image_without_references_is_a_user_error():
    with pytest.raises(PgmError, match="no reference captions"):
        caption_metrics({1: "a cat"}, {1: ["a cat"], 2: []})


@requires_java
def test_cider_only_is_the_full_runs_cider_without_meteor(result, monkeypatch):
    import pycocoevalcap.meteor.meteor as meteor

    def no_meteor(*args, **kwargs):
        raise AssertionError("cider_only started METEOR's JVM")

    monkeypatch.setattr(meteor, "Meteor", no_meteor)
    only = caption_metrics(PREDICTIONS, REFERENCES, cider_only=True)
    assert only["metrics"] == {"CIDEr": result["metrics"]["CIDEr"]}
    assert {i: s["CIDEr"] for i, s in only["per_image"].items()} == {
        i: s["CIDEr"] for i, s in result["per_image"].items()}
