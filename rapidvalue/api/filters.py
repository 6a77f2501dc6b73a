"""Query filters: django-filter, with the API's rule that input it cannot use is a 400, never ignored.

* Booleans: django-filter turns anything but its own spellings into "no filter", so
  ``?is_admin=banana`` answered the unfiltered list. Here ``true/false/1/0`` or a 400.
* References (foreign keys) in ``filterset_fields``: only the id's type is checked (uuid or
  integer), an unknown id matches nothing (as the explicit ``UUIDFilter`` declarations do).
* Date-times: normalised to UTC before they reach PostgreSQL, whose offsets stop at 15:59
  (``+20:27`` was a database error, a 500).
* An empty value means "not given" (``allowEmptyValue`` in the OpenAPI document).

Every filter set derives from :class:`PlatformFilterSet`; ``filterset_fields`` get it through
:class:`PlatformFilterBackend`.
"""

from __future__ import annotations

import datetime

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend

TRUE_VALUES = frozenset({"true", "1"})
FALSE_VALUES = frozenset({"false", "0"})


class StrictBooleanField(forms.Field):
    def to_python(self, value):
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text in TRUE_VALUES:
            return True
        if text in FALSE_VALUES:
            return False
        raise ValidationError("Enter true or false.", code="invalid")


class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", forms.TextInput)
        super().__init__(*args, **kwargs)


class UTCIsoDateTimeField(IsoDateTimeField):
    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(datetime.UTC)
        except OverflowError:  # within hours of year 1 or 9999: the bound itself
            bound = datetime.datetime.min if value.year == 1 else datetime.datetime.max
            return bound.replace(tzinfo=datetime.UTC)


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class PlatformFilterSet(django_filters.FilterSet):
    FILTER_DEFAULTS = {
        **django_filters.FilterSet.FILTER_DEFAULTS,
        models.BooleanField: {"filter_class": StrictBooleanFilter},
        models.DateTimeField: {"filter_class": IsoDateTimeFilter},
    }

    @classmethod
    def filter_for_lookup(cls, field, lookup_type):
        if isinstance(field, models.ForeignKey) and lookup_type == "exact":
            target = field.target_field
            if isinstance(target, models.UUIDField):
                return django_filters.UUIDFilter, {}
            if isinstance(target, models.AutoField | models.IntegerField):
                return django_filters.NumberFilter, {}
        return super().filter_for_lookup(field, lookup_type)


class PlatformFilterBackend(DjangoFilterBackend):
    filterset_base = PlatformFilterSet
