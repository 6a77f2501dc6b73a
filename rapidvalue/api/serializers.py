"""Serializer bases: a JSON value of the wrong type is a 400, as the OpenAPI document promises.

DRF's fields coerce: a CharField turns ``42`` into ``"42"``, a BooleanField takes ``1`` and
``"yes"``, an IntegerField ``"7"``, a UUIDField an integer. The document says ``type: string`` /
``boolean`` / ``integer``, so the API must refuse what it does not declare. Every input serializer
derives from :class:`PlatformSerializer` or :class:`PlatformModelSerializer`.
"""

from __future__ import annotations

from collections.abc import Mapping

from rest_framework import serializers

_STRING_FIELDS = (serializers.CharField, serializers.UUIDField, serializers.DateTimeField, serializers.DateField,
                  serializers.TimeField, serializers.DurationField)


def _expected_type(field: serializers.Field) -> tuple[type, ...] | None:
    if isinstance(field, serializers.BooleanField):
        return (bool,)
    if isinstance(field, serializers.IntegerField):
        return (int,)
    if isinstance(field, serializers.FloatField):
        return (int, float)
    if isinstance(field, _STRING_FIELDS) and not isinstance(field, serializers.ChoiceField):
        return (str,)
    return None


def _wrong_type(value, expected: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in expected:
        return True  # True is an int in Python, not in JSON
    return not isinstance(value, expected)


class StrictJSONTypesMixin:
    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            errors = {}
            for name, field in self.fields.items():
                if field.read_only or name not in data or data[name] is None:
                    continue
                value = data[name]
                if isinstance(field, serializers.ListField) and isinstance(value, list):
                    # The items of a list are checked the same way: ``[false]`` is not a list of UUIDs.
                    field = field.child
                    expected = _expected_type(field)
                    if expected and any(_wrong_type(item, expected) for item in value):
                        kind = {bool: "boolean", int: "integer", str: "string"}.get(expected[0], "number")
                        errors[name] = [f"Each item must be a JSON {kind}."]
                    continue
                expected = _expected_type(field)
                if expected and _wrong_type(value, expected):
                    kind = {bool: "boolean", int: "integer", str: "string"}.get(expected[0], "number")
                    errors[name] = [f"Must be a JSON {kind}."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class PlatformSerializer(StrictJSONTypesMixin, serializers.Serializer):
    pass


class PlatformModelSerializer(StrictJSONTypesMixin, serializers.ModelSerializer):
    pass
