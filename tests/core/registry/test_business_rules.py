from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from core.recommendations.ranking import RuleKind
from core.registry.models import BusinessRule
from core.registry.selectors import business_rules_active

pytestmark = pytest.mark.django_db


def test_only_enabled_rules_within_their_dates_are_active():
    now = timezone.now()
    BusinessRule.objects.create(name="always", kind="exclude", item_ids=["a"])
    BusinessRule.objects.create(name="off", kind="exclude", item_ids=["b"], enabled=False)
    BusinessRule.objects.create(
        name="later", kind="exclude", item_ids=["c"], starts_at=now + timedelta(days=1)
    )
    BusinessRule.objects.create(
        name="over", kind="exclude", item_ids=["d"], ends_at=now - timedelta(seconds=1)
    )
    BusinessRule.objects.create(
        name="now",
        kind="boost",
        category="shoes",
        factor=3,
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(hours=1),
    )

    rules = business_rules_active(now=now)

    assert {(r.kind, tuple(r.item_ids), r.category) for r in rules} == {
        (RuleKind.EXCLUDE, ("a",), ""),
        (RuleKind.BOOST, (), "shoes"),
    }


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"kind": "exclude"}, "__all__"),
        ({"kind": "pin", "category": "shoes"}, "item_ids"),
        ({"kind": "boost", "item_ids": ["a"], "factor": 0.5}, "factor"),
        ({"kind": "exclude", "item_ids": ["a", ""]}, "item_ids"),
        ({"kind": "exclude", "item_ids": "a"}, "item_ids"),
    ],
)
def test_invalid_rules_are_refused_with_a_reason(fields, field):
    rule = BusinessRule(name="bad", **fields)
    with pytest.raises(ValidationError) as excinfo:
        rule.full_clean()
    assert field in excinfo.value.message_dict
