"""The control-plane audit log is append-only in the database too (UPDATE/DELETE/TRUNCATE raise)."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION rv_control_plane_audit_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'control-plane audit events are append-only (% refused)', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER tenancy_cpaudit_append_only
  BEFORE UPDATE OR DELETE ON tenancy_controlplaneauditevent
  FOR EACH ROW EXECUTE FUNCTION rv_control_plane_audit_append_only();
CREATE TRIGGER tenancy_cpaudit_no_truncate
  BEFORE TRUNCATE ON tenancy_controlplaneauditevent
  FOR EACH STATEMENT EXECUTE FUNCTION rv_control_plane_audit_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS tenancy_cpaudit_append_only ON tenancy_controlplaneauditevent;
DROP TRIGGER IF EXISTS tenancy_cpaudit_no_truncate ON tenancy_controlplaneauditevent;
DROP FUNCTION IF EXISTS rv_control_plane_audit_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
