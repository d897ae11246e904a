"""The JSON form of a network's architecture config: one ``to_dict``/``from_dict`` for every config.

Each network's config (:class:`~ddpm_lib.models.unet.UNetConfig`,
:class:`~ddpm_lib.models.classifier.ClassifierConfig`, :class:`~ddpm_lib.models.vae.VAEConfig`) is a
frozen dataclass that inherits :class:`DictConfig`. Checkpoints store ``config.to_dict()`` in their
JSON header and rebuild the network from ``Config.from_dict(meta[...])``; the config's own
``__post_init__`` then validates the values. This module imports nothing else of ddpm_lib.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

__all__ = ["DictConfig"]

C = TypeVar("C", bound="DictConfig")


class DictConfig:
    """Mixin for a (frozen) dataclass config: a JSON-ready dict and back, refusing keys it does not know.

    The dataclass's fields must be JSON values (numbers, strings, booleans, ``None``) or tuples of
    them; tuples are written as lists and read back as tuples.

    ``FIELDS_ADDED_LATER`` maps a field added after checkpoints were shipped to the value that every
    checkpoint written before it implicitly has (e.g. ``{"learn_variance": False}``): :meth:`from_dict`
    reads a dict without that key as having this value. Every other field must be present.
    """

    FIELDS_ADDED_LATER: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, in field order, with every tuple written as a list.

        Returns:
            A new dict ``{field name: value}``; ``json.dumps`` of it needs no custom encoder.
        """
        return {name: _json_ready(value) for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Rebuild a config from :meth:`to_dict`'s output (e.g. a checkpoint's JSON).

        Lists are turned back into tuples for the fields annotated as tuples; the values are
        then checked by the config's own ``__post_init__``.

        Args:
            d: a mapping with exactly the config's field names as keys.

        Raises:
            TypeError: if ``d`` is not a mapping.
            ValueError: if ``d`` has keys the config does not know or lacks some of its fields (other than
                those of ``FIELDS_ADDED_LATER``);
                the message names the config class, the unknown and the missing keys and the
                allowed keys (a checkpoint written by another version of ddpm_lib). Also any
                ``ValueError`` of the config's own validation.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict of its fields, got {type(d).__name__}.")
        allowed = [f.name for f in dataclasses.fields(cls)]
        d = {**{k: v for k, v in cls.FIELDS_ADDED_LATER.items() if k not in d}, **d}
        unknown = sorted(set(d) - set(allowed))
        missing = sorted(set(allowed) - set(d))
        if unknown or missing:
            raise ValueError(
                f"{cls.__name__} mismatch: unknown keys {unknown}, missing keys {missing}; the allowed keys are "
                f"{allowed}. A checkpoint with these keys was written by a different version of ddpm_lib; "
                "use that version or retrain."
            )
        tuple_fields = _tuple_fields(cls)
        return cls(**{k: tuple(v) if k in tuple_fields and isinstance(v, list) else v for k, v in d.items()})


def _json_ready(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    return value


def _tuple_fields(cls: type) -> set[str]:
    # the fields annotated tuple[...] (or a union with one, e.g. tuple[int, ...] | None)
    hints = typing.get_type_hints(cls)
    names = set()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
        if any(opt is tuple or typing.get_origin(opt) is tuple for opt in options):
            names.add(f.name)
    return names


_UnionType = type(int | None)
