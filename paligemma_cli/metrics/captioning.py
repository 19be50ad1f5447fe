"""COCO caption metrics through pycocoevalcap (the COCO caption evaluation code).

BLEU-1..4, METEOR, ROUGE-L and CIDEr (CIDEr-D, raw scale: 0 to about 10, not x100) after
the Stanford PTB tokenizer, as pycocoevalcap's COCOEvalCap does. SPICE only when its
Stanford CoreNLP jars are already installed: pycocoevalcap would otherwise try to download
them on first use. pycocoevalcap is imported lazily: it is only needed here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence

from paligemma_cli.errors import PgmError

# pycocoevalcap.spice.get_stanford_models looks for these in <pycocoevalcap>/spice/lib/ and
# downloads this zip (its URL) when the first is absent. `pgm doctor` uses the same names.
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
CORENLP_URL = "http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"


def _spice_lib_dir() -> str | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "spice", "lib")


def _spice_missing_jars(lib_dir: str | None) -> list[str]:
    """The CoreNLP jars SPICE needs that are not in `lib_dir` (checked without downloading)."""
    if lib_dir is None:
        return list(CORENLP_JARS)
    return [jar for jar in CORENLP_JARS if not os.path.isfile(os.path.join(lib_dir, jar))]


def _spice_install_hint(lib_dir: str | None) -> str:
    """Why SPICE is skipped and how to enable it, in one line (the CLI prints it as is)."""
    where = lib_dir or "<site-packages>/pycocoevalcap/spice/lib"
    return (
        f"it needs Java and the Stanford CoreNLP 3.6.0 jars, which are not in {where}/; to enable it, put "
        f"{' and '.join(CORENLP_JARS)} from {CORENLP_URL} there (`pgm doctor` prints the commands)."
    )


def _require_java() -> None:
    if shutil.which("java") is None:
        raise PgmError(
            "Java was not found: the COCO caption metrics (PTB tokenizer, METEOR, SPICE) run on a JVM.",
            "Install a Java runtime (e.g. `apt-get install default-jre-headless`) and make sure `java` is on PATH.",
        )


def _tokenize(gts: dict, res: dict) -> tuple[dict, dict]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One JVM start instead of COCOEvalCap's two: the tokenizer works line by line, so
    # tokenising references and predictions together gives the same tokens.
    both = {("gt", k): v for k, v in gts.items()}
    both.update({("res", k): v for k, v in res.items()})
    tokens = PTBTokenizer().tokenize(both)
    if len(tokens) != len(both):
        raise PgmError(
            "The Stanford PTB tokenizer (Java) returned fewer lines than captions were sent.",
            "Check that `java -version` works and that pycocoevalcap's tokenizer directory is writable.",
        )
    return {k: tokens[("gt", k)] for k in gts}, {k: tokens[("res", k)] for k in res}


def _check_references(ids: list, references: Mapping[Hashable, Sequence[str]]) -> None:
    if not ids:
        raise PgmError("No reference captions to score against.", "Check the captioning data set split.")
    empty = [i for i in ids if not references[i]]
    if empty:
        raise PgmError(
            f"{len(empty)} image(s) have no reference captions (e.g. {empty[0]!r}).",
            "Every scored image needs at least one reference caption.",
        )


def _meteor(gts: dict, res: dict):
    """METEOR's (score, per-image scores), stopping its JVM (~6 s to start: one call for the whole set)."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        return meteor.compute_score(gts, res)
    except ValueError as exc:  # the JVM died and returned no score line
        raise PgmError(
            f"METEOR (Java) stopped before returning scores: {exc}.",
            "METEOR asks for a 2 GB Java heap; check free memory and that `java -version` works.",
        ) from exc
    finally:
        # Stop the JVM now. Meteor.__del__ would do it too, but it first takes a lock that
        # compute_score leaves held when it fails, and would then hang.
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
        if meteor.lock.locked():
            meteor.lock.release()


def _spice(ids: list, gts: dict, res: dict, metrics: dict, per_image: dict, unavailable: dict) -> None:
    """SPICE into `metrics`/`per_image` when its CoreNLP jars are installed, else why into `unavailable`."""
    lib_dir = _spice_lib_dir()
    if _spice_missing_jars(lib_dir):
        unavailable["SPICE"] = _spice_install_hint(lib_dir)
        return
    try:
        from pycocoevalcap.spice.spice import Spice

        score, scores = Spice().compute_score(gts, res)
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable["SPICE"] = f"it failed to run ({type(exc).__name__}); {_spice_install_hint(lib_dir)}"
        return
    metrics["SPICE"] = float(score)
    # Spice returns its per-image scores in *sorted* id order (COCOEvalCap pairs them
    # with unsorted ids, a known mislabelling there); map them back by sorted id.
    for i, s in zip(sorted(ids), scores):
        per_image[i]["SPICE"] = float(s["All"]["f"])


def caption_metrics(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    cider_only: bool = False,
) -> dict:
    """COCO caption metrics of one predicted caption per image against its reference captions.

    Scores every image in `references`; an image missing from `predictions` is scored as an
    empty caption (0 on every metric) and predictions for unknown images are ignored. CIDEr's
    document frequencies come from the references passed, so score the whole split at once.

    Returns ``{"metrics": {"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr"[, "SPICE"]},
    "per_image": {image_id: {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"[, "SPICE"]}},
    "unavailable": {metric: why and how to install}}`` on pycocoevalcap's raw scales.
    BLEU is corpus-level (not the mean of per-image BLEU). Raises `PgmError` when Java is missing.
    `cider_only` computes CIDEr alone (same tokens, same value), skipping METEOR's and SPICE's JVMs
    (~6 s each): for callers that need only the headline, like `pgm study`'s cells.
    """
    ids = list(references)
    _check_references(ids, references)
    _require_java()
    gts = {i: [{"caption": c} for c in references[i]] for i in ids}
    res = {i: [{"caption": predictions.get(i, "")}] for i in ids}
    gts, res = _tokenize(gts, res)

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    metrics: dict[str, float] = {}
    per_image: dict = {i: {} for i in ids}

    def record(name, score, scores):
        metrics[name] = float(score)
        for i, s in zip(ids, scores):  # scorers return per-image scores in gts key order
            per_image[i][name] = float(s)

    if cider_only:
        record("CIDEr", *Cider().compute_score(gts, res))
        return {"metrics": metrics, "per_image": per_image, "unavailable": {}}
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        metrics[f"Bleu_{n + 1}"] = float(bleu[n])
    for i, s in zip(ids, bleu_per_image[3]):
        per_image[i]["Bleu_4"] = float(s)
    record("METEOR", *_meteor(gts, res))
    record("ROUGE_L", *Rouge().compute_score(gts, res))
    record("CIDEr", *Cider().compute_score(gts, res))
    unavailable: dict = {}
    _spice(ids, gts, res, metrics, per_image, unavailable)
    return {"metrics": metrics, "per_image": per_image, "unavailable": unavailable}
