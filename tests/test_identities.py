"""Identities: pattern 1, the manager chain, lifecycle events and their effects, filters, bad input."""

from __future__ import annotations

import pytest
from django_tenants.utils import tenant_context

from access.models import Account, Application, Entitlement, Grant
from identities.models import Identity, LifecycleEvent
from rapidvalue.audit.models import AuditEvent
from tests.conftest import assert_error

PATTERN_1 = """{
  "external_id": "hr-12345",
  "email": "alice@yourco.com",
  "first_name": "Alice", "last_name": "Smith",
  "department": "Engineering",
  "manager_external_id": "hr-09876"
}"""


def post(api, body, **kw):
    return api("acme", "admin").post("/api/v1/identities", body, **kw)


def in_acme(world, fn):
    with tenant_context(world.acme.tenant):
        return fn()


def test_pattern_1_body_verbatim_then_its_manager_arrives(api, world):
    alice = api("acme", "admin").post("/api/v1/identities", raw=PATTERN_1)
    assert alice.status_code == 201, alice.body
    assert alice.body["manager_id"] is None and alice.body["manager_external_id"] == "hr-09876"
    assert alice.body["display_name"] == "Alice Smith" and alice.body["status"] == "active"
    bob = post(api, {"external_id": "hr-09876", "first_name": "Bob", "last_name": "Boss"}).body
    linked = api("acme", "admin").get(f"/api/v1/identities/{alice.body['id']}").body
    assert linked["manager_id"] == bob["id"] and linked["depth"] == 1
    reports = api("acme", "admin").get(f"/api/v1/identities/{bob['id']}/reports").body["items"]
    assert [r["external_id"] for r in reports] == ["hr-12345"]


def test_out_of_order_managers_build_the_whole_chain(api, world):
    # Reports arrive before their managers, three levels deep, in reverse order.
    for ext, mgr in (("e4", "e3"), ("e3", "e2"), ("e2", "e1"), ("e1", None)):
        body = {"external_id": ext, "last_name": ext}
        if mgr:
            body["manager_external_id"] = mgr
        assert post(api, body).status_code == 201
    people = in_acme(world, lambda: {
        i.external_id: i for i in Identity.objects.filter(external_id__in=["e1", "e2", "e3", "e4"])})
    assert people["e4"].manager_id == people["e3"].pk and people["e3"].manager_id == people["e2"].pk
    assert people["e2"].manager_id == people["e1"].pk
    assert [people[e].depth for e in ("e1", "e2", "e3", "e4")] == [0, 1, 2, 3]
    assert people["e4"].path.startswith(people["e1"].path)
    indirect = api("acme", "admin").get(f"/api/v1/identities/{people['e1'].pk}/reports?indirect=true").body
    assert {r["external_id"] for r in indirect["items"]} == {"e2", "e3", "e4"}
    direct = api("acme", "admin").get(f"/api/v1/identities/{people['e1'].pk}/reports").body
    assert [r["external_id"] for r in direct["items"]] == ["e2"]


def test_manager_cycles_are_refused_with_409_and_change_nothing(api, world):
    top = post(api, {"external_id": "c1"}).body
    mid = post(api, {"external_id": "c2", "manager_external_id": "c1"}).body
    low = post(api, {"external_id": "c3", "manager_external_id": "c2"}).body
    client = api("acme", "admin")
    assert_error(client.patch(f"/api/v1/identities/{top['id']}", {"manager_id": low["id"]}), 409, "manager_cycle")
    assert_error(client.patch(f"/api/v1/identities/{top['id']}", {"manager_id": top["id"]}), 409, "manager_cycle")
    assert_error(client.patch(f"/api/v1/identities/{mid['id']}", {"manager_external_id": "c3"}), 409,
                 "manager_cycle")
    assert client.get(f"/api/v1/identities/{top['id']}").body["manager_id"] is None


def test_moving_a_subtree_rewrites_every_path_below(api, world):
    for ext, mgr in (("m1", None), ("m2", None), ("m3", "m1"), ("m4", "m3"), ("m5", "m4")):
        post(api, {"external_id": ext, **({"manager_external_id": mgr} if mgr else {})})
    client = api("acme", "admin")
    m2, m3 = (in_acme(world, lambda e=e: Identity.objects.get(external_id=e)) for e in ("m2", "m3"))
    response = client.patch(f"/api/v1/identities/{m3.pk}", {"manager_id": str(m2.pk)})
    assert response.status_code == 200, response.body
    people = in_acme(world, lambda: {i.external_id: i for i in Identity.objects.filter(external_id__startswith="m")})
    for ext in ("m3", "m4", "m5"):
        assert people[ext].path.startswith(people["m2"].path)
        assert not people[ext].path.startswith(people["m1"].path)
    assert people["m5"].depth == 3
    under_m1 = client.get(f"/api/v1/identities/{people['m1'].pk}/reports?indirect=true").body
    assert under_m1["total"] == 0


def test_joiner_mover_leaver_events_and_effects(api, world):
    client = api("acme", "admin")
    person = post(api, {"external_id": "jml", "department": "Sales", "title": "Rep"}).body
    app = in_acme(world, lambda: Application.objects.create(name="JML App"))
    ent = in_acme(world, lambda: Entitlement.objects.create(application=app, value="jml-group"))
    account = in_acme(world, lambda: Account.objects.create(application=app, identity_id=person["id"], native_id="j"))
    in_acme(world, lambda: Grant.objects.create(identity_id=person["id"], entitlement=ent))
    in_acme(world, lambda: Grant.objects.create(account=account, entitlement=ent, source="sync"))

    client.patch(f"/api/v1/identities/{person['id']}", {"email": "new@acme.example"})  # not a mover change
    client.patch(f"/api/v1/identities/{person['id']}", {"department": "Marketing", "title": "Lead"})
    left = client.post(f"/api/v1/identities/{person['id']}/deactivate")
    assert left.status_code == 200 and left.body["status"] == "terminated" and left.body["end_date"]

    events = in_acme(world, lambda: list(LifecycleEvent.objects.filter(identity_id=person["id"]).order_by("id")))
    assert [e.kind for e in events] == ["joiner", "mover", "leaver"]
    assert events[1].changes == {"department": ["Sales", "Marketing"], "title": ["Rep", "Lead"]}
    assert in_acme(world, lambda: Account.objects.get(pk=account.pk).status) == "disabled"
    states = in_acme(world, lambda: set(Grant.objects.filter(entitlement=ent).values_list("state", flat=True)))
    assert states == {"ended"}
    actions = in_acme(world, lambda: list(
        AuditEvent.objects.filter(object_id=person["id"]).values_list("action", flat=True)))
    assert "identity.create" in actions and "identity.leaver_access_removed" in actions
    assert_error(client.post(f"/api/v1/identities/{person['id']}/deactivate"), 409, "already_deactivated")


def test_manager_change_is_a_mover(api, world):
    post(api, {"external_id": "boss-a"})
    boss_b = post(api, {"external_id": "boss-b"}).body
    worker = post(api, {"external_id": "worker", "manager_external_id": "boss-a"}).body
    api("acme", "admin").patch(f"/api/v1/identities/{worker['id']}", {"manager_id": boss_b["id"]})
    mover = in_acme(world, lambda: LifecycleEvent.objects.get(identity_id=worker["id"], kind="mover"))
    assert mover.changes["manager"][1] == boss_b["id"]


def test_a_failed_change_raises_no_event(api, world):
    post(api, {"external_id": "stable"})
    before = in_acme(world, lambda: LifecycleEvent.objects.count())
    person = in_acme(world, lambda: Identity.objects.get(external_id="stable"))
    response = api("acme", "admin").patch(f"/api/v1/identities/{person.pk}", {"department": "X", "status": "bogus"})
    assert_error(response, 400, "invalid")
    assert in_acme(world, lambda: (LifecycleEvent.objects.count(), Identity.objects.get(pk=person.pk).department)) == (
        before, "")


@pytest.mark.parametrize("body,field", [
    ({}, "external_id"),
    ({"external_id": "   "}, "external_id"),
    ({"external_id": "x1", "status": "retired"}, "status"),
    ({"external_id": "x1", "email": "nope"}, "email"),
    ({"external_id": "x1", "manager_id": "not-a-uuid"}, "manager_id"),
    ({"external_id": "x1", "manager_id": "00000000-0000-0000-0000-000000000000"}, "manager_id"),
    ({"external_id": "x1", "start_date": "2026-13-01"}, "start_date"),
    ({"external_id": "x1", "start_date": "2026-05-01", "end_date": "2026-01-01"}, "end_date"),
    ({"external_id": "x1", "attributes": [1, 2]}, "attributes"),
    ({"external_id": "x1", "employment_type": "robot"}, "employment_type"),
])
def test_bad_input_is_400_and_creates_nothing(api, world, body, field):
    before = in_acme(world, Identity.objects.count)
    error = assert_error(post(api, body), 400, "invalid")
    assert field in error["details"]["fields"], error
    assert in_acme(world, Identity.objects.count) == before


def test_duplicate_external_id_is_409(api, world):
    assert post(api, {"external_id": "dup"}).status_code == 201
    assert_error(post(api, {"external_id": "dup"}), 409, "duplicate_external_id")
    assert in_acme(world, lambda: Identity.objects.filter(external_id="dup").count()) == 1


def test_identities_are_deactivated_not_deleted(api, world):
    person = post(api, {"external_id": "keep-me"}).body
    assert_error(api("acme", "admin").delete(f"/api/v1/identities/{person['id']}"), 409, "use_deactivate")


def test_filters(api, world):
    post(api, {"external_id": "f1", "department": "Legal", "first_name": "Zed", "last_name": "Zulu",
               "status": "pending"})
    boss = post(api, {"external_id": "f2", "department": "Legal", "email": "boss.legal@acme.example"}).body
    post(api, {"external_id": "f3", "department": "Ops", "manager_external_id": "f2"})
    client = api("acme", "admin")

    def ids(query):
        return {i["external_id"] for i in client.get(f"/api/v1/identities?{query}").body["items"]}

    assert ids("department=Legal") == {"f1", "f2"}
    assert ids("status=pending") == {"f1"}
    assert ids(f"manager={boss['id']}") == {"f3"}
    assert ids("q=zulu") == {"f1"}
    assert ids("q=boss.legal") == {"f2"}
    assert_error(client.get("/api/v1/identities?status=retired"), 400, "invalid")
    assert_error(client.get("/api/v1/identities?manager=12"), 400, "invalid")
    assert_error(client.get(f"/api/v1/identities/{boss['id']}/reports?indirect=maybe"), 400, "invalid")


def test_chains_deeper_than_the_limit_are_refused_with_409(api, world):
    from identities.services import MAX_DEPTH

    with tenant_context(world.acme.tenant):
        previous = None
        for n in range(MAX_DEPTH + 1):
            previous = Identity.objects.create(external_id=f"deep-{n}", manager=previous, depth=n,
                                               path=(previous.path if previous else "") + f"{n:032x}/")
    response = post(api, {"external_id": "too-deep", "manager_external_id": f"deep-{MAX_DEPTH}"})
    assert_error(response, 409, "chain_too_deep")


def test_concurrent_moves_keep_paths_consistent(world, django_db_blocker):
    """Two transactions move X under Y and Y under Z at once: the tree lock keeps every path right."""
    import threading

    from django.db import connection, transaction

    from identities import services

    with django_db_blocker.unblock():
        with tenant_context(world.acme.tenant):
            ids = {n: services.create_identity(external_id=f"race-{n}").pk for n in ("x", "y", "z")}
        barrier = threading.Barrier(2)
        errors = []

        def move(who, under):
            try:
                with tenant_context(world.acme.tenant), transaction.atomic():
                    person = Identity.objects.get(pk=ids[who])
                    barrier.wait()
                    services.update_identity(person, manager=Identity.objects.get(pk=ids[under]))
            except Exception as exc:
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=move, args=("x", "y")), threading.Thread(target=move, args=("y", "z"))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors
            with tenant_context(world.acme.tenant):
                x, y, z = (Identity.objects.get(pk=ids[n]) for n in ("x", "y", "z"))
                assert x.path.startswith(y.path) and y.path.startswith(z.path) and x.depth == 2
        finally:
            with tenant_context(world.acme.tenant):
                Identity.objects.filter(pk__in=ids.values()).update(manager=None)
                Identity.objects.filter(pk__in=ids.values()).delete()
            connection.set_schema_to_public()


def test_fast_identity_representation_is_drfs_own(api, world):
    """The compiled read path of IdentitySerializer gives exactly DRF's generic representation."""
    from datetime import date

    from rest_framework import serializers

    from identities.api.serializers import IdentitySerializer

    boss = post(api, {"external_id": "fast-boss", "first_name": "Bo"}).body
    post(api, {"external_id": "fast-1", "first_name": "Ann", "manager_id": boss["id"], "start_date": "2024-02-29",
               "end_date": "2030-01-01", "attributes": {"cost_center": "42", "tags": ["a", 1, None]}})
    post(api, {"external_id": "fast-2", "manager_external_id": "not-yet-there", "status": "suspended"})

    def check():
        people = list(Identity.objects.filter(external_id__startswith="fast-").order_by("external_id"))
        people.append(Identity(external_id="unsaved", start_date=date(2020, 1, 1), attributes={}))
        assert IdentitySerializer._fast_plan() is not None  # really the fast path
        for person in people:
            fast = IdentitySerializer(person).data
            generic = serializers.ModelSerializer.to_representation(IdentitySerializer(person), person)
            assert fast == generic and list(fast) == list(generic)
        listed = IdentitySerializer(people, many=True).data
        assert listed == [serializers.ModelSerializer.to_representation(IdentitySerializer(p), p) for p in people]
        return listed

    listed = in_acme(world, check)
    ann = listed[0]  # fast-1, fast-2, fast-boss, unsaved
    assert ann["created_at"].endswith("Z") and ann["start_date"] == "2024-02-29" and ann["manager_id"] == boss["id"]
    assert ann["attributes"] == {"cost_center": "42", "tags": ["a", 1, None]} and listed[3]["created_at"] is None


@pytest.mark.parametrize("prefix", ["ab/", "ab/cd/", "a%/", "a_/"])
def test_path_within_is_startswith(world, db, prefix):
    """``path__within`` (an index range) selects exactly the paths that ``startswith`` selects."""
    paths = ["ab/", "ab/cd/", "ab/cd/ef/", "ab/cdx/", "ab0/", "ab.", "aa/zz/", "ac/", "a%/", "a%/b/", "ax/", "a_/"]

    def check():
        created = Identity.objects.bulk_create(
            [Identity(external_id=f"within-{n}", path=p) for n, p in enumerate(paths)])
        ids = [i.pk for i in created]
        within = set(Identity.objects.filter(pk__in=ids, path__within=prefix).values_list("path", flat=True))
        assert within == {p for p in paths if p.startswith(prefix)}

    in_acme(world, check)


def test_pages_found_by_primary_keys_are_the_plain_slices(api, world):
    """Identity pages are read by primary keys first (deferred join): same rows, same order as slicing."""
    admin = api("acme", "admin")
    for n in range(9):
        post(api, {"external_id": f"page-{n}", "first_name": f"F{n % 3}", "last_name": "Same" if n < 6 else f"L{n}",
                   "department": "Sales" if n % 2 else "Ops"})

    def ids(query: str) -> list[str]:
        return [i["id"] for i in admin.get(f"/api/v1/identities?{query}").body["items"]]

    for query, filters in (("q=page-", {"external_id__startswith": "page-"}),
                           ("q=page-&department=Sales", {"external_id__startswith": "page-", "department": "Sales"})):
        expected = in_acme(world, lambda filters=filters: [
            str(pk) for pk in Identity.objects.filter(**filters).order_by("last_name", "first_name", "id")
            .values_list("pk", flat=True)])
        assert ids(f"{query}&limit=500") == expected and len(expected) >= 4
        walked = [pk for offset in range(0, len(expected) + 3, 2) for pk in ids(f"{query}&limit=2&offset={offset}")]
        assert walked == expected
