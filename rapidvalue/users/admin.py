from django import forms
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm, ReadOnlyPasswordHashField

from rapidvalue.admin_sites import AuditedAdminMixin, control_plane_site, tenant_site

from .models import User


class UserCreationForm(forms.ModelForm):
    password1 = forms.CharField(label="Password", widget=forms.PasswordInput, min_length=10)

    class Meta:
        model = User
        fields = ("email", "full_name", "is_admin", "is_auditor", "is_staff")

    def save(self, commit=True):
        user = super().save(commit=False)
        user.set_password(self.cleaned_data["password1"])
        if commit:
            user.save()
        return user


class UserChangeForm(forms.ModelForm):
    password = ReadOnlyPasswordHashField(label="Password")

    class Meta:
        model = User
        fields = ("email", "password", "full_name", "is_active", "is_staff", "is_admin", "is_auditor",
                  "identity_id", "last_login", "date_joined")


class UserAdmin(AuditedAdminMixin, DjangoUserAdmin):
    audit_object_type = "user"
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm
    ordering = ("email",)
    list_display = ("email", "full_name", "is_admin", "is_auditor", "is_staff", "is_active", "last_login")
    list_filter = ("is_admin", "is_auditor", "is_staff", "is_active")
    search_fields = ("email", "full_name")
    filter_horizontal = ()
    fieldsets = (
        (None, {"fields": ("email", "password", "full_name")}),
        ("Roles", {"fields": ("is_active", "is_staff", "is_admin", "is_auditor", "identity_id")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"fields": ("email", "full_name", "password1", "is_admin", "is_auditor", "is_staff")}),)
    readonly_fields = ("last_login", "date_joined")


tenant_site.register(User, UserAdmin)
control_plane_site.register(User, UserAdmin)
