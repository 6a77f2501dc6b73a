"""Role checks shared by every endpoint.

A view may declare ``read_roles`` (who may read; default: any principal of the tenant, with
rows restricted by scoping), ``write_roles`` (default: admins) and ``requires_tenant``
(default True: a request resolved to the control plane cannot reach tenant data).
Auditors are read-only everywhere: any write from them is a 403.
"""

from __future__ import annotations

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission

ROLE_CHECKS = {
    "admin": lambda p: p.is_admin,
    "auditor": lambda p: p.is_auditor,
    "any": lambda p: True,
}


def has_role(principal, roles) -> bool:
    return any(ROLE_CHECKS[role](principal) for role in roles)


class TenantRolePermission(BasePermission):
    def has_permission(self, request, view) -> bool:
        principal = request.user
        if principal is None or not getattr(principal, "is_authenticated", False):
            return False
        if getattr(view, "requires_tenant", True) and principal.tenant is None:
            raise PermissionDenied(
                "This endpoint acts inside a tenant: control-plane staff send X-Tenant-Id.",
                code="tenant_required",
            )
        if request.method in SAFE_METHODS:
            roles = getattr(view, "read_roles", None)
            if roles and not has_role(principal, roles):
                raise PermissionDenied("Your role may not read this resource.", code="permission_denied")
            return True
        if principal.is_auditor:
            raise PermissionDenied("Auditors have read-only access.", code="read_only_role")
        if not has_role(principal, getattr(view, "write_roles", ("admin",))):
            raise PermissionDenied("Only tenant administrators may change this resource.", code="permission_denied")
        return True
