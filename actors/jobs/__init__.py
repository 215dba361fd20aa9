"""Jobs: running an agent's job.

`models` is the model side (a conversation in, a reply with text or tool calls out):
the `ModelProvider` interface, the offline `EchoProvider` and the `OpenAIProvider`.
"""
