from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("connectors", "0001_initial")]
    operations = [
        migrations.RunSQL("ALTER TABLE connectors_syncseen SET UNLOGGED", "ALTER TABLE connectors_syncseen SET LOGGED"),
    ]
