"""Create the demo user when none exists, and print how to log in and call the API (`make run` runs it).

The demo user is a plain user (not staff, not superuser): it sees its own agents and the shared ones, like
any user. For the admin, create an administrator with `manage.py createsuperuser`."""

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the demo user (DEMO_USER / DEMO_PASSWORD) if missing and print its API token."

    def handle(self, *args, **options):
        User = get_user_model()
        username, password = settings.DEMO_USER, settings.DEMO_PASSWORD
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_password(password)
            user.save()
        elif user.is_staff or user.is_superuser:
            # Its password is printed on every `make run` (and is the README's): never an administrator.
            # Demo users made staff by earlier versions are demoted.
            User.objects.filter(pk=user.pk).update(is_staff=False, is_superuser=False)
            self.stdout.write(f"{username} is no longer staff or superuser: its password is public.")
        token, _ = Token.objects.get_or_create(user=user)
        base = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
        shown_password = password if created or user.check_password(password) else "(changed; not shown)"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"Demo user {'created' if created else 'ready'}: {username} / {shown_password}",
                    f"API token: {token.key}",
                    f"Console:   {base}/   API docs: {base}/api/docs/",
                    "Try it:",
                    f'  curl -s {base}/api/v1/agents/ -H "Authorization: Token {token.key}"',
                    f"  curl -s {base}/api/v1/agents/technical-writer/execute/ \\",
                    f'    -H "Authorization: Token {token.key}" -H "Content-Type: application/json" \\',
                    '    -d \'{"input_data": {"task": "Explain what an API token is in one sentence."}}\'',
                    "",
                ]
            )
        )
