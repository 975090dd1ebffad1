"""OpenAI-compatible facade: `POST /v1/chat/completions`, `POST /v1/responses`, `GET /v1/responses/{id}` and
`GET /v1/models` over agent runs.

Any OpenAI client works unchanged: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="<API token>")`,
`model="<agent slug>"`.

    wire.py            request bodies as pydantic models; validation errors -> OpenAI's 400 naming the param
    schemas.py         a chat request -> the agent run it asks for (ChatRequest, RequestOptions)
    checks.py          what the request asks of this agent (platform options, tool names, schema + agent kind)
    responses.py       chat.completion / chunk objects (openai SDK types); streaming.py: the chat SSE stream
    responses_api.py   a Responses body -> the equivalent chat body; responses_render.py / _stream.py: output
    response_store.py  stored responses and previous_response_id on Conversations
"""
