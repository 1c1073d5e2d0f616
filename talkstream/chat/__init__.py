"""Chat: the seam a session answers turns through (`ChatModel` opens one `ChatSession` per connection), the built-in
Thinker-Talker behind it (`responder`), an OpenAI-compatible endpoint (`openai_thinker`) and the echo stand-in.

Above `models` (it wraps the Thinker and Talker), below `services` (sessions open chat sessions through the seam).
"""

from talkstream.chat.echo import EchoResponder
from talkstream.chat.protocol import ChatModel, ChatSession, ReplyFormat, Thinker

__all__ = ["ChatModel", "ChatSession", "EchoResponder", "ReplyFormat", "Thinker"]
