"""A saved password change, by any path, revokes the user's refresh tokens.

The API, the UI's password page, the admin, ``manage changepassword`` and
``user.set_password(); user.save()`` all end in ``User.save()``: comparing the stored hash before
the save catches every one of them. (Access tokens and refresh tokens also stop matching the
new hash, see ``recotem.accounts.tokens``; the blacklist makes the revocation visible in the
admin and lasting even if a password were set back.)
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save, pre_save

from recotem.accounts.tokens import tokens_revoke_user

_CHANGED = "_recotem_password_changed"


def _remember_password_change(
    sender: Any, instance: Any, update_fields: Any = None, **_: Any
) -> None:
    if instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    stored = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    setattr(instance, _CHANGED, stored is not None and stored != instance.password)


def _revoke_after_password_change(sender: Any, instance: Any, created: bool, **_: Any) -> None:
    if getattr(instance, _CHANGED, False):
        setattr(instance, _CHANGED, False)
        # In the same transaction as the save: both happen, or neither does.
        tokens_revoke_user(user_id=instance.pk)


def connect() -> None:
    user_model = get_user_model()
    pre_save.connect(_remember_password_change, sender=user_model, dispatch_uid="recotem-pw-pre")
    post_save.connect(
        _revoke_after_password_change, sender=user_model, dispatch_uid="recotem-pw-post"
    )
