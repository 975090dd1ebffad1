"""Token authentication with the token -> user lookup cached, so an API request spends no query on it.

DRF's TokenAuthentication joins authtoken_token to auth_user on every request. Here the pair is kept in
Django's "auth" cache (Redis when REDIS_URL is set, so every server process sees the same entries and the same
invalidations, each keeping copies of what it read until any process changes them: config/near_cache.py; the
process's own memory otherwise) for AUTH_CACHE_SECONDS, under a hash of the key, never
the key itself. Entries are dropped at once when the token is deleted or replaced and when its user is
saved or deleted (deactivated, made staff, password changed...), by the signal handlers below. A change that
bypasses signals (a queryset .update()) is seen after AUTH_CACHE_SECONDS at most.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from config.near_cache import peek_many

PREFIX = "auth-token:"


def _cache():
    return caches["auth"]


def _cache_key(key: str) -> str:
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        if not settings.AUTH_CACHE_SECONDS:
            return super().authenticate_credentials(key)
        entry = _cache_key(key)
        found = _cache().get(entry)
        if found is None:
            user, token = super().authenticate_credentials(key)  # raises for unknown keys: never cached
            _cache().set(entry, (user, token), settings.AUTH_CACHE_SECONDS)
            return user, token
        return _active(found)

    def peek_credentials(self, key: str) -> tuple[Any, Any] | None:
        """authenticate_credentials answered from this process's memory only (config/near_cache.py
        peek_many), or None when that needs I/O (not cached, or not in this process): for the run admission
        on the event loop."""
        if not settings.AUTH_CACHE_SECONDS:
            return None
        entry = _cache_key(key)
        found = peek_many(_cache(), [entry])
        return None if found is None else _active(found[entry])


def _active(found: tuple[Any, Any]) -> tuple[Any, Any]:
    user, token = found
    if not user.is_active:  # cannot happen while invalidation works; cheap to keep true anyway
        raise exceptions.AuthenticationFailed("User inactive or deleted.")
    return user, token


class CachedBearerTokenAuthentication(CachedTokenAuthentication):
    """The same under the `Bearer` scheme that OpenAI clients use."""

    keyword = "Bearer"


def forget_tokens_of(user_id: Any) -> None:
    keys = list(Token.objects.filter(user_id=user_id).values_list("key", flat=True))
    if keys:
        _cache().delete_many([_cache_key(key) for key in keys])


@receiver(post_delete, sender=Token)
@receiver(post_save, sender=Token)
def _token_changed(sender: Any, instance: Token, **kwargs: Any) -> None:
    _cache().delete(_cache_key(instance.key))


@receiver(post_save, sender=get_user_model())
def _user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if not created:
        forget_tokens_of(instance.pk)


@receiver(post_delete, sender=get_user_model())
def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    # The user's Token rows are deleted by cascade first, each with its own post_delete above.
    forget_tokens_of(instance.pk)
