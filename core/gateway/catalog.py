"""The model catalog: what each gateway model costs and which inputs it takes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from imagine_bot.core.errors import ConfigError

#: ModKie's playground lists these three; kie accepts the wider set (gateway contract).
MODKIE_ASPECT_RATIOS = ("1:1", "16:9", "9:16")
KIE_ASPECT_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16", "2:3", "3:2", "21:9")


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One choice input of a model (``aspect_ratio``, ``quality``)."""

    name: str
    choices: tuple[str, ...]
    default: str
    #: chat flags that set it, without the dashes: ``("ar", "aspect")``
    flags: tuple[str, ...]
    help: str = ""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    label: str
    cost: int
    max_prompt_chars: int
    inputs: tuple[InputSpec, ...]
    #: fixed input fields sent with every job (the gateway fills in no defaults)
    fixed: dict[str, object] = field(default_factory=dict)
    #: how many reference images (``image_urls``) it takes: 0 for text-to-image, (1, 14) for an edit
    references: tuple[int, int] = (0, 0)

    @property
    def edits(self) -> bool:
        return self.references[1] > 0

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def defaults(self) -> dict[str, str]:
        return {spec.name: spec.default for spec in self.inputs}

    def nearest_aspect_ratio(self, width: int, height: int) -> str:
        """The offered aspect ratio closest in shape to ``width`` x ``height`` (an edit without ``--ar`` keeps
        its reference's shape). Shapes are compared on a log scale, so 2:1 is as far from 1:1 as 1:2 is."""
        spec = self.input("aspect_ratio")
        if width <= 0 or height <= 0:
            return spec.default
        shape = math.log(width / height)

        def distance(ratio: str) -> float:
            w, h = (int(part) for part in ratio.split(":"))
            return abs(math.log(w / h) - shape)

        return min(spec.choices, key=distance)

    def with_aspect_ratios(self, ratios: Iterable[str]) -> ModelSpec:
        ratios = tuple(ratios)
        unknown = [r for r in ratios if r not in KIE_ASPECT_RATIOS]
        if unknown:
            known = ", ".join(KIE_ASPECT_RATIOS)
            raise ConfigError("MODKIE_ASPECT_RATIOS", f"unknown ratio {unknown[0]!r}; known: {known}")
        ar = self.input("aspect_ratio")
        default = ar.default if ar.default in ratios else ratios[0]
        new_inputs = tuple(replace(s, choices=ratios, default=default) if s.name == "aspect_ratio" else s
                           for s in self.inputs)
        return replace(self, inputs=new_inputs)


SEEDREAM_45 = ModelSpec(
    id="seedream/4.5-text-to-image",
    label="Seedream 4.5",
    cost=18,
    max_prompt_chars=3000,
    inputs=(
        InputSpec("aspect_ratio", MODKIE_ASPECT_RATIOS, "1:1", ("ar", "aspect", "aspect-ratio"),
                  "shape of the image"),
        InputSpec("quality", ("basic", "high"), "basic", ("quality", "q"), "basic is about 2K, high about 4K"),
    ),
    fixed={"nsfw_checker": False},
)

#: the same inputs plus ``image_urls``: 1 to 14 public URLs of jpeg, png or webp images, <= 10 MB each
SEEDREAM_45_EDIT = replace(SEEDREAM_45, id="seedream/4.5-edit", label="Seedream 4.5 Edit", references=(1, 14))

#: what a reference image may be (gateway contract)
REFERENCE_TYPES = ("image/jpeg", "image/png", "image/webp")
REFERENCE_MAX_BYTES = 10 * 1024 * 1024

CATALOG: dict[str, ModelSpec] = {spec.id: spec for spec in (SEEDREAM_45, SEEDREAM_45_EDIT)}
#: the model that edits images for each text-to-image model
EDIT_MODELS: dict[str, str] = {SEEDREAM_45.id: SEEDREAM_45_EDIT.id}


def get_model(model_id: str, aspect_ratios: Iterable[str] = ()) -> ModelSpec:
    """The catalog entry for ``model_id``, with the aspect-ratio set widened if configured."""
    try:
        spec = CATALOG[model_id]
    except KeyError:
        raise ConfigError("MODKIE_MODEL", f"unknown model {model_id!r}; known: {', '.join(CATALOG)}") from None
    ratios = tuple(aspect_ratios)
    return spec.with_aspect_ratios(ratios) if ratios else spec


def edit_model(text_model: ModelSpec) -> ModelSpec:
    """The edit model that goes with ``text_model``, with the same choices (aspect ratios) as it."""
    if text_model.edits:
        return text_model
    spec = CATALOG[EDIT_MODELS.get(text_model.id, SEEDREAM_45_EDIT.id)]
    return replace(spec, inputs=text_model.inputs)
