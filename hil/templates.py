"""Labeling configs: the bundled templates, and reading any config's controls.

hilt knows three kinds of project. An ``sft`` project has a TextArea on the prompt's Text
object: the annotator's answer. A ``preference`` project has a Pairwise over two Text
objects: the annotator's choice. A ``rate`` project has a Rating on an answer's Text object,
with optional TextAreas on it: a critique, then a corrected answer. Projects made from Label Studio's stock LLM templates
are read the same way: controls are found by what they are attached to, not by name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hilt.errors import UserError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAMES = ("sft", "preference", "rate")
# Task data columns each template's prompts file must give (JSONL/CSV/HF dataset).
REQUIRED_COLUMNS = {"sft": ("prompt",), "preference": ("prompt", "answer1", "answer2"), "rate": ("prompt",)}
OBJECT_TAGS = {"Text", "HyperText", "Paragraphs"}


@dataclass(frozen=True)
class LabelingSpec:
    """Where the prompt, the answer(s) and the judgement live in a project's tasks and results."""

    kind: Literal["sft", "preference", "rate"]
    prompt_object: str = "prompt"  # name of the Text object showing the prompt
    prompt_key: str = "prompt"  # task data key of the prompt
    answer_control: str | None = None  # sft: TextArea name; None = any TextArea on the prompt
    comparison_control: str | None = None  # preference: Pairwise name; None = any Pairwise
    left_key: str = "answer1"  # preference: data key of the left (first) answer
    right_key: str = "answer2"
    rationale_control: str | None = None  # preference: optional TextArea on the prompt
    answer_key: str = "answer"  # rate: data key of the graded answer
    answer_object: str = "answer"  # rate: name of the Text object showing it
    rating_control: str | None = None  # rate: Rating name; None = any Rating
    critique_control: str | None = "critique"  # rate: optional TextArea on the answer
    correction_control: str | None = "corrected"  # rate: optional TextArea on the answer
    controls: frozenset[str] = field(default_factory=frozenset)  # every control; empty = unknown
    # (name, tag in lower case, toName) of every control: what a JSON-MIN export's keys are.
    control_tags: tuple[tuple[str, str, str], ...] = ()


def template_xml(name: str) -> str:
    """The bundled labeling config of a template (``TEMPLATE_NAMES``)."""
    if name not in TEMPLATE_NAMES:
        raise UserError(f"unknown template '{name}'; use one of {', '.join(TEMPLATE_NAMES)}")
    return (TEMPLATES_DIR / f"{name}.xml").read_text()


def default_spec(kind: str) -> LabelingSpec:
    """The spec to read an export file with when its labeling config is not at hand.

    It matches the bundled templates and Label Studio's stock ones alike: the answer is
    whichever TextArea result points at the ``prompt`` object.
    """
    if kind not in TEMPLATE_NAMES:
        raise UserError(f"unknown template '{kind}'; use one of {', '.join(TEMPLATE_NAMES)}")
    return LabelingSpec(kind=kind)  # type: ignore[arg-type]


def parse_label_config(xml: str, where: str = "label config") -> LabelingSpec:
    """Read a labeling config and find the prompt, answer and comparison controls.

    Raises:
        UserError: when the XML is malformed or has neither kind of control.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise UserError(f"{where}: not valid XML ({err}); fix the labeling config") from None
    objects = {
        el.get("name"): (el.get("value") or "").lstrip("$")
        for el in root.iter()
        if el.tag in OBJECT_TAGS and el.get("name")
    }
    controls = [el for el in root.iter() if el.get("toName") and el.get("name")]
    names = frozenset(el.get("name") for el in controls)
    tags = tuple((el.get("name"), el.tag.lower(), el.get("toName")) for el in controls)
    prompt_object = "prompt" if objects.get("prompt") == "prompt" else next(
        (name for name, key in objects.items() if key == "prompt"), None
    )
    rating = next((el for el in controls if el.tag == "Rating"), None)
    if rating is not None and prompt_object is not None and rating.get("toName") in objects \
            and rating.get("toName") != prompt_object:
        # rate: a Rating on the answer's Text; TextAreas on it are the critique, then the correction.
        target = rating.get("toName")
        notes = [el.get("name") for el in controls if el.tag == "TextArea" and el.get("toName") == target]
        return LabelingSpec(
            kind="rate", prompt_object=prompt_object, prompt_key=objects[prompt_object], answer_object=target,
            answer_key=objects[target], rating_control=rating.get("name"),
            critique_control=notes[0] if notes else None, correction_control=notes[1] if len(notes) > 1 else None,
            controls=names, control_tags=tags,
        )
    pairwise = next((el for el in controls if el.tag == "Pairwise"), None)
    textareas_on_prompt = [el for el in controls if el.tag == "TextArea" and el.get("toName") == prompt_object]
    if pairwise is not None:
        targets = [t.strip() for t in pairwise.get("toName", "").split(",")]
        if len(targets) != 2 or not all(t in objects for t in targets):
            raise UserError(f"{where}: Pairwise '{pairwise.get('name')}' must point at two Text objects")
        if prompt_object is None:
            raise UserError(f"{where}: no Text object shows $prompt; the preference template needs one")
        return LabelingSpec(
            kind="preference",
            prompt_object=prompt_object,
            prompt_key=objects[prompt_object],
            comparison_control=pairwise.get("name"),
            left_key=objects[targets[0]],
            right_key=objects[targets[1]],
            rationale_control=textareas_on_prompt[0].get("name") if textareas_on_prompt else None,
            controls=names,
            control_tags=tags,
        )
    if prompt_object is not None and textareas_on_prompt:
        return LabelingSpec(
            kind="sft",
            prompt_object=prompt_object,
            prompt_key=objects[prompt_object],
            answer_control=textareas_on_prompt[0].get("name"),
            controls=names,
            control_tags=tags,
        )
    raise UserError(
        f"{where}: neither a TextArea on a $prompt Text (sft), a Pairwise over two answers (preference) nor a "
        "Rating on an answer (rate); create the project from `hilt label create --template sft|preference|rate`"
    )
