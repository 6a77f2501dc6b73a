from django.apps import AppConfig


class UsersConfig(AppConfig):
    """People who sign in: tenant users in each tenant schema, control-plane staff in public."""

    name = "rapidvalue.users"
    label = "users"
    verbose_name = "Users"
