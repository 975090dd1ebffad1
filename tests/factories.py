"""factory_boy factories: tests build rows with these, not fixtures."""

import factory
from django.contrib.auth import get_user_model

from apps.agents.models import Agent, AgentExecution, Conversation, ExecutionStatus, Message


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("pw-for-tests-123")


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Agent {n}")
    agent_id = factory.Sequence(lambda n: f"agent-{n}")
    system_prompt = "You are a helpful assistant."
    preferred_platform = "openai"
    model = "gpt-4o-mini"
    max_retries = 2
    timeout_seconds = 30


class ConversationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Conversation

    owner = factory.SubFactory(UserFactory)
    agent = factory.SubFactory(AgentFactory, owner=factory.SelfAttribute("..owner"))
    title = "A conversation"


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    conversation = factory.SubFactory(ConversationFactory)
    position = factory.Sequence(lambda n: n + 1)
    role = "user"
    content = "hello"


class ExecutionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AgentExecution

    agent = factory.SubFactory(AgentFactory)
    agent_slug = factory.LazyAttribute(lambda e: e.agent.agent_id)
    user = factory.LazyAttribute(lambda e: e.agent.owner)
    status = ExecutionStatus.PENDING
    input_data = factory.LazyFunction(lambda: {"task": "Say hello"})
