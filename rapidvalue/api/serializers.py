"""Serializer bases: a JSON value of the wrong type is a 400, as the OpenAPI document promises.

DRF's fields coerce: a CharField turns ``42`` into ``"42"``, a BooleanField takes ``1`` and
``"yes"``, an IntegerField ``"7"``, a UUIDField an integer. The document says ``type: string`` /
``boolean`` / ``integer``, so the API must refuse what it does not declare. Every input serializer
derives from :class:`PlatformSerializer` or :class:`PlatformModelSerializer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from django.conf import settings
from django.utils import timezone as django_timezone
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

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
                elif (isinstance(field, serializers.CharField) and field.max_length is not None
                      and isinstance(value, str) and len(value) > field.max_length):
                    # maxLength applies to what was sent: DRF would measure it after trimming whitespace.
                    errors[name] = [f"Ensure this field has no more than {field.max_length} characters."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class PlatformSerializer(StrictJSONTypesMixin, serializers.Serializer):
    pass


class PlatformModelSerializer(StrictJSONTypesMixin, serializers.ModelSerializer):
    pass


# --------------------------------------------------------------------------------------------
# Fast read path
# --------------------------------------------------------------------------------------------

_Converter = Callable[[Any, Any], Any]  # (value, timezone) -> JSON-ready value


def _as_str(value, tz):
    return str(value)


def _as_int(value, tz):
    return int(value)


def _as_is(value, tz):
    return value


def _date_converter(field: serializers.DateField) -> _Converter | None:
    if str(getattr(field, "format", api_settings.DATE_FORMAT)).lower() != ISO_8601:
        return None

    def convert(value, tz):
        if not value:
            return None
        return value if isinstance(value, str) else value.isoformat()

    return convert


def _datetime_converter(field: serializers.DateTimeField) -> _Converter | None:
    if str(getattr(field, "format", api_settings.DATETIME_FORMAT)).lower() != ISO_8601 or hasattr(field, "timezone"):
        return None

    def convert(value, tz):
        if not value:
            return None
        if isinstance(value, str):
            return value
        if tz is None or not django_timezone.is_aware(value):
            return field.to_representation(value)  # naive values or USE_TZ off: DRF's own rules
        try:
            text = value.astimezone(tz).isoformat()
        except OverflowError:
            return field.to_representation(value)  # DRF's "overflow" validation error
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return convert


def _bound(field: serializers.Field) -> _Converter:
    def convert(value, tz):
        return field.to_representation(value)

    return convert


def _converter(field: serializers.Field) -> _Converter | None:
    """A converter giving exactly ``field.to_representation(value)``, or None when not supported.

    Decided by the *implementation* of ``to_representation`` (a subclass that overrides it is
    not supported), so a converter never disagrees with DRF.
    """
    method = type(field).to_representation
    if method is serializers.CharField.to_representation:
        return _as_str
    if method is serializers.IntegerField.to_representation:
        return _as_int
    if method is serializers.UUIDField.to_representation:
        return _as_str if field.uuid_format == "hex_verbose" else None
    if method is serializers.JSONField.to_representation:
        return None if field.binary else _as_is
    if method is serializers.DateField.to_representation:
        return _date_converter(field)
    if method is serializers.DateTimeField.to_representation:
        return _datetime_converter(field)
    if method in (serializers.ChoiceField.to_representation, serializers.BooleanField.to_representation):
        return _bound(field)  # stateless apart from the field's own (static) choices
    return None


class FastRepresentationMixin:
    """Serialize model instances without DRF's per-field machinery; the JSON is the same.

    Why: DRF's generic ``to_representation`` (``get_attribute``, ``_readable_fields``, timezone
    lookup per datetime) plus building the serializer's fields cost ~8 ms per 50-row page of
    identities, a third of the request. Here the readable fields are compiled once per class into
    (name, attribute, converter) and each converter is DRF's own rule for that field type (see
    :func:`_converter`). A serializer with any field that cannot be compiled that way (nested or
    dotted sources, method fields, relations, custom ``to_representation``) keeps the generic path.

    Only for serializers whose readable fields do not depend on the context (request, view).
    """

    _fast_plans: ClassVar[dict[type, list[tuple[str, str, _Converter]] | None]] = {}

    @classmethod
    def _fast_plan(cls) -> list[tuple[str, str, _Converter]] | None:
        if cls not in FastRepresentationMixin._fast_plans:
            FastRepresentationMixin._fast_plans[cls] = cls._compile_fast_plan()
        return FastRepresentationMixin._fast_plans[cls]

    @classmethod
    def _compile_fast_plan(cls) -> list[tuple[str, str, _Converter]] | None:
        model = getattr(getattr(cls, "Meta", None), "model", None)
        if model is None:
            return None
        plain_attributes = {f.attname for f in model._meta.concrete_fields}
        plan = []
        for name, field in cls().fields.items():
            if field.write_only:
                continue
            attrs = field.source_attrs
            converter = _converter(field)
            if len(attrs) != 1 or attrs[0] not in plain_attributes or converter is None:
                return None
            plan.append((name, attrs[0], converter))
        return plan

    def to_representation(self, instance):
        plan = self._fast_plan()
        if plan is None or not isinstance(instance, self.Meta.model):
            return super().to_representation(instance)
        tz = self.__dict__.get("_fast_tz", False)
        if tz is False:  # one lookup per serializer (a list shares its child), not one per datetime
            tz = self._fast_tz = django_timezone.get_current_timezone() if settings.USE_TZ else None
        result = {}
        for name, attribute, convert in plan:
            value = getattr(instance, attribute)
            result[name] = None if value is None else convert(value, tz)
        return result
