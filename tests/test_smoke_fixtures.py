from django_tenants.utils import tenant_context

from rapidvalue.users.models import User


def test_world_has_two_isolated_tenants(world, db):
    with tenant_context(world.acme.tenant):
        acme_emails = set(User.objects.values_list("email", flat=True))
    with tenant_context(world.globex.tenant):
        globex_emails = set(User.objects.values_list("email", flat=True))
    assert "admin@acme.test" in acme_emails
    assert "admin@globex.test" in globex_emails
    assert not acme_emails & globex_emails


def test_me_answers_for_each_token_kind(api):
    response = api("acme", "admin").get("/api/v1/auth/me")
    assert response.status_code == 200, response.content
    assert response.body["tenant"] == "acme"
    assert response.body["is_admin"] is True
    response = api("acme", "service_auditor").get("/api/v1/auth/me")
    assert response.body["kind"] == "service"
    assert response.body["is_auditor"] is True
