"""OpenAI-compatible facade: `POST /v1/chat/completions` and `GET /v1/models` over agent runs.

Any OpenAI client works unchanged: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="<API token>")`,
`model="<agent slug>"`. See schemas.py for how a chat request maps onto an agent run.
"""
